"""The Hydra config tree: every experiment composes and builds (also under debug=tiny), typos
are errors naming the key, resolvers and helpers behave."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from portrait_toon import config, resume

EXPERIMENTS = sorted(
    p.relative_to(config.CONF_DIR / "experiment").with_suffix("").as_posix()
    for p in (config.CONF_DIR / "experiment").rglob("*.yaml")
)


@pytest.fixture
def compose(tmp_path):
    def _compose(overrides=(), name="train", config_dir=None):
        return config.compose_config(name, overrides, tmp_path / "run", config_dir=config_dir)

    return _compose


def needs_weights(error: BaseException) -> bool:
    """The error (or one it wraps) says a weight file is missing and how to get it."""
    from portrait_toon.checkpoints import MissingWeightsError

    while error is not None:
        if isinstance(error, MissingWeightsError):
            return True
        if isinstance(error, config.ConfigError) and "missing weight files" in str(error):
            return "make weights" in str(error)
        error = error.__cause__ or error.__context__
    return False


def test_there_are_experiments():
    assert {"demo", "ablation/full_body", "ablation/cutface"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("debug", [None, "tiny"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(compose, experiment, debug):
    from hydra.utils import instantiate

    from portrait_toon.tasks.train import build_callbacks, build_datamodule, build_model, prepare

    overrides = [f"experiment={experiment}"] + ([f"debug={debug}"] if debug else [])
    cfg = compose(overrides)
    try:
        prepare(cfg)
        datamodule, synthesizer = build_datamodule(cfg)
        model = build_model(cfg)
    except Exception as error:  # noqa: BLE001 - only a missing-weights error is acceptable
        # an experiment on real weights: without them, an error naming the file and the fix
        assert debug is None, f"debug=tiny must run without downloads: {error!r}"
        assert needs_weights(error), f"unexpected error without weights: {error!r}"
        return
    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg, False), logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps > 0
    if debug == "tiny":
        assert cfg.resolution == 32 and cfg.trainer.max_steps <= 8
        assert datamodule.batch_size <= 2
    if synthesizer is not None:
        assert synthesizer.resolution == cfg.resolution
        assert hasattr(model, "net_ema")
        if debug == "tiny":
            # the tiny world really runs: one pair at 32 px through the network
            pairs = synthesizer(torch.tensor([0]))
            assert pairs["src"].shape == (1, 3, 32, 32)
            assert model.net.eval()(pairs["src"]).shape == (1, 3, 32, 32)


def test_full_body_rung_switches_off_reflection_and_cutface(compose):
    cfg = compose(["experiment=ablation/full_body"])
    assert not cfg.augmentation.color_reflection.enabled
    assert not cfg.augmentation.cutface.enabled
    assert not cfg.data.landscapes  # no landscapes decoded for nothing
    assert compose(["experiment=demo"]).augmentation.color_reflection.enabled


@pytest.mark.parametrize("name", ["synthesize", "evaluate"])
@pytest.mark.parametrize("debug", [None, "tiny"])
def test_other_entry_configs_compose(compose, name, debug):
    overrides = ["ckpt_path=x"] if name == "evaluate" else []
    overrides += [f"debug={debug}"] if debug else []
    cfg = compose(overrides, name=name)
    config.apply_set_if_present(cfg)
    config.validate(cfg)
    assert cfg.resolution == (32 if debug else cfg.resolution)
    if name == "synthesize" and debug:
        assert cfg.num_pairs <= 8 and cfg.preview.num_images <= 2


def test_composed_config_is_struct(compose):
    cfg = compose()
    assert OmegaConf.is_struct(cfg)
    with pytest.raises(ConfigAttributeError):
        cfg.trainer.max_stpes = 3


@pytest.mark.parametrize(
    "override,named",
    [
        ("modle=x", "modle"),
        ("trainer.max_stpes=3", "max_stpes"),
        ("augmentation.cutface.pp=0.5", "augmentation.cutface.pp"),
    ],
)
def test_typo_on_the_command_line_names_the_key(compose, override, named):
    with pytest.raises(ConfigCompositionException, match=named.replace(".", r"\.")):
        compose([override])


@pytest.mark.parametrize(
    "override,named",
    [("model=nope", "model/nope"), ("debug=tinyy", "debug/tinyy"), ("experiment=demoo", "demoo")],
)
def test_unknown_choice_names_it_and_lists_the_options(compose, override, named):
    with pytest.raises(MissingConfigException, match=named) as error:
        compose([override])
    assert "Available options" in str(error.value)


def test_typo_in_an_experiment_file_is_caught_by_validate(compose, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf)
    (conf / "experiment" / "typo.yaml").write_text(
        "# @package _global_\n"
        "augmentation:\n  cutface:\n    pp: 0.5\n"
        "trainer:\n  max_stpes: 3\n"
        "data:\n  batch_sise: 4\n"
    )
    cfg = compose(["experiment=typo"], config_dir=conf)  # Hydra merges file keys silently
    with pytest.raises(config.ConfigError) as error:
        config.validate(cfg)
    message = str(error.value)
    assert "augmentation.cutface.pp: unknown key" in message
    assert "trainer.max_stpes" in message and "pytorch_lightning.Trainer" in message
    assert "data.batch_sise" in message and "OnTheFlyDataModule" in message


def test_missing_weight_file_is_named_with_the_fix(tmp_path):
    cfg = OmegaConf.create(
        {
            "paths": {"weights_dir": str(tmp_path / "weights")},
            "generator": {"checkpoint": "${paths.weights_dir}/stylegan2-ffhq-config-f.pt"},
        }
    )
    with pytest.raises(config.ConfigError, match=r"generator\.checkpoint.*stylegan2-ffhq") as error:
        config.validate(cfg, check_targets=False)
    assert "make weights" in str(error.value)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "stylegan2-ffhq-config-f.pt").write_bytes(b"x")
    config.validate(cfg, check_targets=False)  # present: no error


def test_inception_weights_are_checked_before_the_run(tmp_path, monkeypatch):
    """A bad evaluate.inception_weights is an error when the config is validated, not when
    the held-out evaluation at the end of the training reads it."""
    missing = tmp_path / "pt_inception.pth"
    cfg = OmegaConf.create({"evaluate": {"enabled": True, "inception_weights": str(missing)}})
    with pytest.raises(config.ConfigError) as error:
        config.validate(cfg, check_targets=False)
    message = str(error.value)
    assert f"evaluate.inception_weights={missing}: no such file" in message
    assert config.INCEPTION_WEIGHTS_FILE in message and "=null" in message
    cfg.evaluate.enabled = False  # no evaluation: nothing reads the file
    config.validate(cfg, check_targets=False)
    cfg.evaluate.enabled = True
    missing.write_bytes(b"x")
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(config.ConfigError, match="torch-fidelity, which is not installed"):
        config.validate(cfg, check_targets=False)
    monkeypatch.undo()
    cfg.evaluate.inception_weights = None
    config.validate(cfg, check_targets=False)  # unset: FID/KID on Inception skipped


def test_set_if_present_only_touches_existing_keys():
    cfg = OmegaConf.create(
        {
            "model": {"net": {"base_channels": 64}},
            "set_if_present": ["model.net.base_channels=8", "model.net.depth=2", "foo.bar=[1, 2]"],
        }
    )
    OmegaConf.set_struct(cfg, True)
    applied = config.apply_set_if_present(cfg)
    assert applied == ["model.net.base_channels=8"]
    assert cfg.model.net.base_channels == 8 and "depth" not in cfg.model.net
    cfg.set_if_present = ["no equals sign"]
    with pytest.raises(config.ConfigError, match="dotted.key=value"):
        config.apply_set_if_present(cfg)


def test_debug_tiny_skips_keys_a_component_lacks(compose):
    # a model choice without `base_channels` (here: removed) must still build under debug=tiny
    cfg = compose(["debug=tiny"])
    with __import__("omegaconf").open_dict(cfg):
        del cfg.model.net["base_channels"]
    config.apply_set_if_present(cfg)
    assert "base_channels" not in cfg.model.net


def test_run_token_differs_between_processes_and_is_stable_within():
    assert config.run_token() == config.run_token()
    code = "import portrait_toon.config as c; print(c.run_token())"
    tokens = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(tokens) == 2 and all(len(t) == 6 for t in tokens)


def test_run_dir_carries_time_and_token():
    hydra_node = OmegaConf.load(config.CONF_DIR / "hydra" / "default.yaml")
    run_dir = OmegaConf.to_container(hydra_node, resolve=False)["run"]["dir"]
    assert "${now:" in run_dir and "${run_token:}" in run_dir


def test_auto_precision(monkeypatch):
    assert config.auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.auto_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert config.auto_precision("auto") == "bf16-mixed"
    assert config.auto_precision("gpu") == "bf16-mixed"
    assert config.auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert config.auto_precision("cuda") == "16-mixed"


def test_resolve_ckpt_path(tmp_path):
    runs = tmp_path / "runs"
    old, new = runs / "a", runs / "b"
    for run in (old, new):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    import os

    os.utime(old / "checkpoints" / "last.ckpt", (1, 1))
    here = tmp_path / "here"
    assert resume.resolve_ckpt_path(None, here, str(runs)) is None
    assert resume.resolve_ckpt_path("last", here, str(runs)) == str(new / "checkpoints/last.ckpt")
    assert resume.resolve_ckpt_path("last", old, str(runs)) == str(old / "checkpoints/last.ckpt")
    assert resume.resolve_ckpt_path(str(old), here, str(runs)) == str(old / "checkpoints/last.ckpt")
    with pytest.raises(config.ConfigError, match="no such checkpoint"):
        resume.resolve_ckpt_path(str(tmp_path / "nope.ckpt"), here, str(runs))
    with pytest.raises(config.ConfigError, match="no last.ckpt"):
        resume.resolve_ckpt_path("last", here, str(tmp_path / "empty"))


def test_paths_follow_project_root(compose, monkeypatch, tmp_path):
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    cfg = compose()
    assert Path(cfg.paths.weights_dir) == tmp_path / "weights"
    assert Path(cfg.paths.output_dir) == (tmp_path / "run").resolve()


def test_command_line_beats_the_debug_shrink(compose):
    cfg = compose(["debug=tiny", "trainer.max_steps=6", "model.net.base_channels=16"])
    config.apply_set_if_present(cfg)
    assert cfg.trainer.max_steps == 6  # given by the user
    assert cfg.model.net.base_channels == 16
    assert cfg.data.batch_size == 2  # not given: shrunk
    # a group choice on the command line does not shield the group's keys
    cfg = compose(["debug=tiny", "model=stylizer_animegan"])
    config.apply_set_if_present(cfg)
    assert cfg.model.discriminator.base_channels == 8
