"""Inference: the stylizer file format and its safety, any-size and tiled stylization, folders
with bad files and existing outputs, the stylize task and ONNX export."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from portrait_toon.config import ConfigError, compose_config
from portrait_toon.data.images import read_image, to_tensor, to_uint8, write_image
from portrait_toon.inference.export import export_onnx, export_program
from portrait_toon.inference.stylize import (
    _spans,
    load_stylizer,
    output_paths,
    stylize_image,
    stylize_paths,
    stylize_tensor,
)
from portrait_toon.nets.unet import UNet
from portrait_toon.tasks.stylize import stylize
from portrait_toon.utils import generator_file
from portrait_toon.utils.generator_file import (
    GENERATOR_FORMAT,
    StylizerLoadError,
    net_target,
    save_stylizer,
)

TINY_UNET = {
    "base_channels": 8,
    "depth": 3,
    "channel_mult": [1, 2, 4],
    "blocks_per_level": 1,
    "bottleneck_blocks": 1,
}
INFERENCE_LOGGER = "portrait_toon.inference.stylize"


def tiny_unet(seed: int = 0) -> UNet:
    """A small U-Net whose weights are randomised, so it is far from the identity it starts as."""
    torch.manual_seed(seed)
    net = UNet(**TINY_UNET)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return net.eval()


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: content with structure at every scale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=2) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def net() -> UNet:
    return tiny_unet()


@pytest.fixture
def exported(tmp_path: Path, net: UNet) -> Path:
    return save_stylizer(tmp_path / "run" / "stylizer.pt", net, meta={"step": 7})


# ------------------------------------------------------------------------- any size, tiling


@pytest.mark.parametrize(("height", "width"), [(97, 131), (40, 72), (131, 97), (8, 8)])
def test_output_size_equals_input_and_matches_the_net(net: UNet, height: int, width: int) -> None:
    image = photo(height, width)
    out = stylize_image(net, image)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    with torch.no_grad():
        reference = to_uint8(net(to_tensor(image)))
    np.testing.assert_array_equal(out, reference)
    assert np.abs(out.astype(int) - image).mean() > 5  # the randomised net really changes it


def test_tiled_matches_untiled_and_tiles_bound_the_input(net: UNet) -> None:
    image = photo(64, 200, seed=1)
    x = to_tensor(image)
    whole = stylize_tensor(net, x)

    seen: list[tuple[int, ...]] = []
    hook = net.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    try:
        tiled = stylize_tensor(net, x, tile=64, overlap=48)
    finally:
        hook.remove()
    # 200 px wide, tiles of 64 overlapping by >= 48 (the randomised net's receptive field is
    # wider than a 64 px tile, so the overlap must carry the context): ten of them, each 64x64.
    assert seen == [(1, 3, 64, 64)] * 10
    seamed = stylize_tensor(net, x, tile=64, overlap=0)

    error = (tiled - whole).abs()
    assert error.mean() < 0.005 and error.max() < 0.05
    # Feathering is what makes it seamless: hard tile borders are visibly worse.
    assert (seamed - whole).abs().max() > 2 * error.max()
    untiled_uint8 = to_uint8(whole).astype(int)
    assert np.abs(to_uint8(tiled).astype(int) - untiled_uint8).max() <= 6


@pytest.mark.parametrize("multiple", [1, 8, 32])
def test_tile_spans_cover_overlap_and_stay_on_the_grid(multiple: int) -> None:
    rng = np.random.default_rng(multiple)
    for _ in range(500):
        tile = multiple * int(rng.integers(1, 40))
        overlap = multiple * int(rng.integers(0, tile // multiple))
        length = multiple * int(rng.integers(1, 300))
        spans = _spans(length, tile, overlap, multiple)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert len({end - start for start, end in spans}) == 1  # one tile shape: one kernel
        for start, end in spans:
            assert end - start <= tile and start % multiple == 0 and end % multiple == 0
        for (start, end), (next_start, _) in zip(spans, spans[1:]):
            assert start < next_start and end - next_start >= overlap
    # 4K height in tiles of 1024: three of 768 spread evenly, not 1024s piled at the edge.
    assert _spans(2176, 1024, 64, 32) == [(0, 768), (704, 1472), (1408, 2176)]


def test_tiling_on_odd_sizes_keeps_the_size(net: UNet) -> None:
    image = photo(97, 131, seed=2)
    whole = stylize_image(net, image)
    tiled = stylize_image(net, image, tile=48, overlap=16)
    assert tiled.shape == image.shape
    assert np.abs(tiled.astype(int) - whole).mean() < 1.5


def test_bad_arguments_are_refused(net: UNet) -> None:
    x = to_tensor(photo(16, 16))
    with pytest.raises(ValueError, match="bf16 needs a CUDA device"):
        stylize_tensor(net, x, precision="bf16")
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        stylize_tensor(net, x, precision="fp16")
    with pytest.raises(ValueError, match="tile=0"):
        stylize_tensor(net, x, tile=0)
    with pytest.raises(ValueError, match="one RGB image"):
        stylize_tensor(net, torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="device=meta but the net is on cpu"):
        stylize_image(net, photo(16, 16), device="meta")
    assert stylize_image(net, photo(16, 16), device="cpu").shape == (16, 16, 3)


# -------------------------------------------------------------------------- stylizer files


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_round_trip(tmp_path: Path, net: UNet, suffix: str) -> None:
    path = save_stylizer(tmp_path / f"stylizer{suffix}", net)
    loaded = load_stylizer(path, "cpu")
    assert isinstance(loaded, UNet) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == net.config
    x = to_tensor(photo(40, 56))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"stylizer{suffix}"]  # atomic write


def test_export_file_is_plain_and_weights_only(exported: Path) -> None:
    content = torch.load(exported, weights_only=True)
    assert content["format"] == "portrait_toon.generator/1"
    assert content["target"] == "portrait_toon.nets.unet.UNet"
    assert content["config"]["base_channels"] == 8 and content["meta"]["step"] == 7


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_net_without_a_config_dict_round_trips(tmp_path: Path, suffix: str) -> None:
    """AnimeGAN's generator (a fixed architecture, no `config`) exports with an empty config."""
    from portrait_toon.nets.animegan import Generator

    torch.manual_seed(0)
    net = Generator().eval()
    loaded = load_stylizer(save_stylizer(tmp_path / f"animegan{suffix}", net))
    x = to_tensor(photo(32, 48))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:.*treespec")
@pytest.mark.filterwarnings("ignore:Found .* in eval mode")  # the EMA copy, by design
def test_lightning_checkpoint_of_the_training_module_loads_ema(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from portrait_toon.training.stylizer import StylizerModule

    module = StylizerModule(
        net=tiny_unet(seed=1).train(),
        loss={"perceptual": {"kind": "none"}, "adv": {"kind": "none"}},
        ema_decay=0.5,
    )
    pairs = [{"src": torch.rand(2, 3, 32, 32) * 2 - 1, "tgt": torch.rand(2, 3, 32, 32) * 2 - 1}]
    loader = torch.utils.data.DataLoader(pairs * 2, batch_size=None)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    loaded = load_stylizer(path)  # weights_only=True on Lightning's own file
    x = to_tensor(photo(32, 48))
    with torch.no_grad():
        # the module runs channels_last, the loaded net NCHW: other kernels, same function
        torch.testing.assert_close(loaded(x), module.net_ema.module(x), rtol=0, atol=1e-5)
        assert not torch.allclose(loaded(x), module.net(x))  # the EMA, not the raw net


def test_lightning_checkpoint_without_record_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": tiny_unet().state_dict()}, path)
    with pytest.raises(StylizerLoadError, match="does not record how to build.*stylizer.pt"):
        load_stylizer(path)


class Payload:
    """Unpickling this would create a folder: the side effect a hostile file would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_hostile_pickle_is_refused_without_running_it(tmp_path: Path, net: UNet) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "stylizer.pt"
    record = {"format": GENERATOR_FORMAT, "target": net_target(net), "config": net.config}
    torch.save({**record, "state_dict": net.state_dict(), "meta": Payload(marker)}, path)
    with pytest.raises(StylizerLoadError, match="stylizer.pt.*refused"):
        load_stylizer(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("os.system", "outside the allowed packages"),
        ("torch.nn.Conv2d", "outside the allowed packages"),
        ("portrait_toon.nets.unet.F", "not a network class"),  # a module imported there
        ("portrait_toon.nets.unet.nn.Module", "cannot be imported"),
        ("portrait_toon.nets.nowhere.Net", "cannot be imported"),
        ("UNet; import os", "not a dotted class name"),
    ],
)
def test_only_project_nets_can_be_named(
    tmp_path: Path, net: UNet, target: str, message: str
) -> None:
    path = tmp_path / "stylizer.pt"
    record = {"format": GENERATOR_FORMAT, "target": target, "config": net.config}
    torch.save({**record, "state_dict": net.state_dict()}, path)
    with pytest.raises(StylizerLoadError, match=message):
        load_stylizer(path)


class StandIn(nn.Module):
    """A network defined outside portrait_toon.nets (only loadable once allow-listed)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.config = {"channels": channels}
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


def test_allow_list_is_the_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StylizerLoadError, match="outside the allowed packages"):
        save_stylizer(tmp_path / "s.pt", StandIn())  # refused at save time already
    monkeypatch.setattr(generator_file, "ALLOWED_NET_PACKAGES", ("portrait_toon.nets", __name__))
    path = save_stylizer(tmp_path / "s.pt", StandIn())
    loaded = load_stylizer(path)
    assert isinstance(loaded, StandIn)
    assert stylize_image(loaded, photo(13, 21)).shape == (13, 21, 3)  # no pad_multiple: 32


def test_bad_files_give_clear_errors(tmp_path: Path, net: UNet) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pt.*ckpt=PATH"):
        load_stylizer(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(StylizerLoadError, match="garbage.pt"):
        load_stylizer(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    with pytest.raises(StylizerLoadError, match="bare.pt: neither a portrait_toon generator"):
        load_stylizer(bare)
    wrong_shape = tmp_path / "wrong.pt"
    record = {"format": GENERATOR_FORMAT, "target": net_target(net)}
    record["config"] = {**net.config, "base_channels": 16}
    torch.save({**record, "state_dict": net.state_dict()}, wrong_shape)
    with pytest.raises(StylizerLoadError, match="wrong.pt.*does not fit"):
        load_stylizer(wrong_shape)
    with pytest.raises(ValueError, match="config.norm holds a object"):
        save_stylizer(tmp_path / "x.pt", net, {**net.config, "norm": object()})


# ------------------------------------------------------------------------------- folders


def make_folder(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    good = write_image(root / "portrait.png", photo(97, 131, seed=3))
    nested = write_image(root / "group" / "wide.jpg", photo(40, 72, seed=4))
    whole = write_image(root / "whole.jpg", photo(64, 64, seed=5))
    broken = root / "broken.jpg"
    broken.write_bytes(whole.read_bytes()[:300])
    whole.unlink()
    (root / "readme.txt").write_text("not an image")
    return {"good": good, "nested": nested, "broken": broken}


def test_folder_with_a_corrupt_file(
    tmp_path: Path, net: UNet, caplog: pytest.LogCaptureFixture
) -> None:
    files = make_folder(tmp_path / "in")
    out_dir = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        report = stylize_paths(net, tmp_path / "in", out_dir, progress=False)
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == ["group/wide.png", "portrait.png"]
    assert read_image(out_dir / "portrait.png").shape == (97, 131, 3)
    assert read_image(out_dir / "group" / "wide.png").shape == (40, 72, 3)
    assert len(report.written) == 2 and not report.existing
    assert [path for path, _ in report.failed] == [files["broken"]]
    assert "truncated" in report.failed[0][1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("broken.jpg" in message for message in warnings)
    assert "stylized 2 of 3 images" in report.summary()


def test_rerun_keeps_existing_outputs_unless_asked(
    tmp_path: Path, net: UNet, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path / "in")
    out_dir = tmp_path / "out"
    stylize_paths(net, tmp_path / "in", out_dir, progress=False)
    target = out_dir / "portrait.png"
    os.utime(target, (1_000_000, 1_000_000))  # an old, recognisable mtime
    before = target.read_bytes()

    with caplog.at_level(logging.INFO, logger=INFERENCE_LOGGER):
        report = stylize_paths(net, tmp_path / "in", out_dir, progress=False)
    assert target.stat().st_mtime == 1_000_000 and target.read_bytes() == before
    assert sorted(report.existing) == [out_dir / "group" / "wide.png", target]
    assert not report.written
    assert any("overwrite=true" in r.getMessage() for r in caplog.records)
    assert "2 output(s) already existed and were kept" in report.summary()

    report = stylize_paths(net, tmp_path / "in", out_dir, overwrite=True, progress=False)
    assert len(report.written) == 2 and target.stat().st_mtime > 1_000_000
    assert target.read_bytes() == before  # same input, same net: same result


def test_single_file_and_suffix(tmp_path: Path, net: UNet) -> None:
    source = write_image(tmp_path / "me.jpg", photo(50, 30))
    report = stylize_paths(net, source, tmp_path / "out", ext="jpg", suffix="_toon", progress=False)
    assert report.written == [(source, tmp_path / "out" / "me_toon.jpg")]
    assert (tmp_path / "out" / "me_toon.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_output_names(tmp_path: Path) -> None:
    for name in ["a.jpg", "a.png", "b.png", "toons/old.png"]:
        write_image(tmp_path / name, photo(8, 8))
    pairs = output_paths(tmp_path, tmp_path / "toons")
    names = {src.name: out.relative_to(tmp_path / "toons").as_posix() for src, out in pairs}
    # same stem: the original suffix disambiguates; the output folder inside is not an input
    assert names == {"a.jpg": "a_jpg.png", "a.png": "a_png.png", "b.png": "b.png"}
    with pytest.raises(ValueError, match="replace its own input"):
        output_paths(tmp_path / "b.png", tmp_path)
    assert output_paths(tmp_path / "b.png", tmp_path, suffix="_toon")[0][1].name == "b_toon.png"
    with pytest.raises(ValueError, match="ext='gif' cannot be written"):
        output_paths(tmp_path, tmp_path / "out", ext="gif")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        output_paths(tmp_path / "nowhere", tmp_path / "out")


# ------------------------------------------------------------------------------- the task


def compose(tmp_path: Path, *overrides: str):
    return compose_config("stylize", overrides, output_dir=tmp_path / "run")


def test_task_stylizes_a_folder_and_writes_a_report(tmp_path: Path, exported: Path) -> None:
    make_folder(tmp_path / "in")
    cfg = compose(
        tmp_path,
        f"ckpt={exported.parent}",  # a run folder: its stylizer.pt
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "progress=false",
    )
    report = stylize(cfg)
    assert len(report.written) == 2 and len(report.failed) == 1
    saved = json.loads((tmp_path / "run" / "stylize_report.json").read_text())
    assert saved["num_written"] == 2 and saved["failed"][0]["input"].endswith("broken.jpg")
    assert saved["ckpt"] == str(exported)


def test_task_errors_name_the_key(tmp_path: Path, exported: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt is required.*python stylize.py ckpt="):
        stylize(compose(tmp_path, f"input={tmp_path}", f"output={tmp_path / 'o'}"))
    with pytest.raises(ConfigError, match="input is required"):
        stylize(compose(tmp_path, f"ckpt={exported}", f"output={tmp_path / 'o'}"))
    with pytest.raises(ConfigError, match="input=.*nowhere: no such file or folder"):
        stylize(compose(tmp_path, f"ckpt={exported}", f"input={tmp_path / 'nowhere'}", "output=o"))
    with pytest.raises(ConfigError, match="ckpt=.*missing.pt: no such file"):
        stylize(
            compose(tmp_path, f"ckpt={tmp_path / 'missing.pt'}", f"input={tmp_path}", "output=o")
        )
    with pytest.raises(ConfigError, match="tile=-5"):
        stylize(compose(tmp_path, f"ckpt={exported}", f"input={tmp_path}", "output=o", "tile=-5"))


def test_command_line(tmp_path: Path, exported: Path, repo_root: Path) -> None:
    """The real entry point: Hydra composes conf/stylize.yaml, logs go to the run folder."""
    make_folder(tmp_path / "in")
    command = [
        sys.executable,
        str(repo_root / "stylize.py"),
        f"ckpt={exported}",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "progress=false",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "portrait.png").is_file()
    assert (tmp_path / "out" / "group" / "wide.png").is_file()
    (log_file,) = (tmp_path / "logs" / "stylize" / "runs").glob("*/stylize.log")
    log_text = log_file.read_text()
    assert "skipped" in log_text and "broken.jpg" in log_text
    assert "stylized 2 of 3 images" in log_text

    missing = subprocess.run(command[:2], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert missing.returncode != 0
    assert "ckpt is required" in missing.stderr + missing.stdout


# ----------------------------------------------------------------------------------- ONNX


def test_exported_program_takes_dynamic_sizes(net: UNet) -> None:
    program = export_program(net, (32, 48)).module()
    for height, width in [(32, 48), (64, 24)]:
        x = to_tensor(photo(height, width))
        with torch.no_grad():
            torch.testing.assert_close(program(x), net(x))


def lut_unet() -> UNet:
    """`tiny_unet` with a randomised colour look-up table on its output."""
    torch.manual_seed(1)
    net = UNet(**TINY_UNET, color_lut=9)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return net.eval()


def test_exported_program_with_color_lut_takes_dynamic_sizes() -> None:
    net = lut_unet()
    program = export_program(net, (32, 48)).module()
    x = to_tensor(photo(64, 24))
    with torch.no_grad():
        torch.testing.assert_close(program(x), net(x))


@pytest.mark.parametrize("with_lut", [False, True], ids=["plain", "color_lut"])
def test_onnx_export(tmp_path: Path, net: UNet, with_lut: bool) -> None:
    net = lut_unet() if with_lut else net
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install onnx onnxscript"):
            export_onnx(net, tmp_path / "f.onnx", (32, 32))
        pytest.skip("onnx/onnxscript not installed: checked the install hint only")
    path = export_onnx(net, tmp_path / "f.onnx", (32, 32))
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if with_lut:  # the 3-D GridSample exists from opset 20 on
        assert "GridSample" in {node.op_type for node in model.graph.node}
        assert max(entry.version for entry in model.opset_import if entry.domain == "") >= 20
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path))
    x = to_tensor(photo(64, 96))
    (output,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), net(x), atol=1e-5, rtol=1e-4)


def test_library_never_prints(tmp_path: Path, net: UNet, capsys) -> None:
    source = write_image(tmp_path / "a.png", photo(16, 16))
    stylize_paths(net, source, tmp_path / "out", progress=False)
    assert capsys.readouterr().out == ""
    Image.open(tmp_path / "out" / "a.png").verify()
