"""`loss.perceptual.kind=vgg19` is one config switch (README "Real weights"): the weight file
defaults to paths.weights_dir/vgg19-dcbb9e9d.pth, so a missing file is the usual error naming
it and `make weights`; kinds with their own file (stlpips) or none keep weights_path null."""

from __future__ import annotations

import pytest

from portrait_toon import config


@pytest.mark.parametrize("config_name, key", [("train", "loss"), ("synthesize", "character")])
def test_vgg19_weights_default_to_the_file_in_weights_dir(tmp_path, config_name, key):
    weights = tmp_path / "weights"
    extra = ["+character=default"] if key == "character" else []
    cfg = config.compose_config(
        config_name,
        [*extra, f"{key}.perceptual.kind=vgg19", f"paths.weights_dir={weights}"],
        tmp_path / "run",
    )
    assert cfg[key].perceptual.weights_path == str(weights / "vgg19-dcbb9e9d.pth")
    with pytest.raises(config.ConfigError) as error:
        config.validate(cfg)
    message = str(error.value)
    assert f"{key}.perceptual.weights_path = {weights / 'vgg19-dcbb9e9d.pth'}" in message
    assert "make weights" in message
    # with the file there, the same config passes (an explicit weights_path still wins)
    weights.mkdir()
    (weights / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    config.validate(cfg, check_targets=False)
    other = tmp_path / "elsewhere.pth"
    cfg = config.compose_config(
        config_name,
        [*extra, f"{key}.perceptual.kind=vgg19", f"{key}.perceptual.weights_path={other}"],
        tmp_path / "run",
    )
    assert cfg[key].perceptual.weights_path == str(other)


@pytest.mark.parametrize("kind", ["stlpips", "none"])
def test_other_kinds_keep_weights_path_null(tmp_path, kind):
    cfg = config.compose_config("train", [f"loss.perceptual.kind={kind}"], tmp_path / "run")
    assert cfg.loss.perceptual.weights_path is None
