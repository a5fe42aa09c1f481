"""The `Stylizer` API: input kinds and sizes, one pass vs seamless tiles, tile=auto under a
memory budget, the measured activation memory, precision rules, loading and model info."""

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
from toy_nets import FailingIdentity, photo, tiny_unet

from portrait_toon.data.images import to_tensor, to_uint8
from portrait_toon.inference.memory import (
    AUTO_TILE_MAX,
    _LiveTensorBytes,
    activation_bytes_per_pixel,
    plan_tiles,
)
from portrait_toon.inference.stylizer import Stylizer, resolve_checkpoint
from portrait_toon.inference.tiling import padded_index, spans
from portrait_toon.nets.unet import UNet
from portrait_toon.utils.generator_file import save_stylizer


@pytest.fixture(scope="module")
def net() -> UNet:
    return tiny_unet()


def one_pass(net: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return to_uint8(net(to_tensor(image)))


# ------------------------------------------------------------------------- kinds and sizes


@pytest.mark.parametrize(("height", "width"), [(97, 131), (40, 72), (131, 97), (8, 8), (3, 5)])
def test_array_in_array_out_equals_the_net(net: UNet, height: int, width: int) -> None:
    image = photo(height, width)
    out = Stylizer(net)(image)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, one_pass(net, image))  # small: one pass, padded alike
    if height * width > 100:
        assert np.abs(out.astype(int) - image).mean() > 5  # the randomised net really changes it


def test_pil_and_tensor_inputs_return_their_own_kind(net: UNet) -> None:
    stylizer = Stylizer(net)
    image = photo(67, 93)
    styled = stylizer(Image.fromarray(image))
    assert isinstance(styled, Image.Image) and styled.mode == "RGB" and styled.size == (93, 67)
    np.testing.assert_array_equal(np.asarray(styled), one_pass(net, image))
    # RGBA and grey are converted (transparency over white)
    rgba = Image.fromarray(image).convert("RGBA")
    assert stylizer(rgba).size == (93, 67) and stylizer(rgba.convert("L")).mode == "RGB"

    x = to_tensor(image)[0]  # [3, H, W] in [-1, 1]
    y = stylizer(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    with torch.no_grad():
        torch.testing.assert_close(y, net(x[None])[0])
    batch = torch.stack([x, x.flip(-1)])
    out = stylizer(batch)
    assert out.shape == (2, 3, 67, 93)
    torch.testing.assert_close(out[0], y)


def test_bad_inputs_and_settings_are_refused(net: UNet, caplog: pytest.LogCaptureFixture) -> None:
    stylizer = Stylizer(net)
    with pytest.raises(ValueError, match=r"uint8 RGB array \[H, W, 3\]"):
        stylizer(photo(16, 16).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        stylizer(torch.rand(3, 16, 16) * 255)
    with pytest.raises(ValueError, match="float tensor"):
        stylizer(torch.zeros(2, 4, 16, 16))
    with pytest.raises(TypeError, match="PIL image"):
        stylizer([1, 2, 3])
    with pytest.raises(ValueError, match="tile=0"):
        Stylizer(net, tile=0)
    with pytest.raises(ValueError, match="max_memory_mb=-1"):
        Stylizer(net, max_memory_mb=-1)
    with pytest.raises(ValueError, match="overlap=-1"):
        Stylizer(net, overlap=-1)
    with pytest.raises(ValueError, match="precision='fp8' is not one of"):
        Stylizer(net, precision="fp8")
    for precision in ("bf16", "fp16"):  # never on a CPU asked for by name
        with pytest.raises(ValueError, match=f"precision={precision} needs a CUDA device"):
            Stylizer(net, device="cpu", precision=precision)
    # device=None keeps a CPU net on the CPU: not an automatic choice, refused the same way
    cpu_net = tiny_unet()
    with pytest.raises(ValueError, match="precision=bf16 needs a CUDA device"):
        Stylizer(cpu_net, precision="bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_auto_device_falls_back_to_fp32_with_a_warning(
    net: UNet, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        stylizer = Stylizer(tiny_unet(), device="auto", precision="bf16")
    assert stylizer.precision == "fp32" and stylizer.device.type == "cpu"
    assert any("running in fp32" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------- tiling


def test_tiles_match_one_pass_and_bound_the_input(net: UNet) -> None:
    image = photo(64, 200, seed=1)
    whole = Stylizer(net, tile=None)(to_tensor(image))

    seen: list[tuple[int, ...]] = []
    hook = net.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    try:
        tiled = Stylizer(net, tile=64, overlap=48)(to_tensor(image))
        tiled_uint8 = Stylizer(net, tile=64, overlap=48)(image)
    finally:
        hook.remove()
    # 200 px wide, tiles of 64 overlapping by >= 48 (the randomised net's receptive field is
    # wider than a 64 px tile, so the overlap must carry the context): ten of them, each 64x64.
    assert seen == [(1, 3, 64, 64)] * 20
    seamed = Stylizer(net, tile=64, overlap=0)(to_tensor(image))

    error = (tiled - whole).abs()
    assert error.mean() < 0.005 and error.max() < 0.05
    # Feathering is what makes it seamless: hard tile borders are visibly worse.
    assert (seamed - whole).abs().max() > 2 * error.max()
    # the uint8 path (tiles cut from the uint8 array, blended in a row band) agrees
    np.testing.assert_allclose(tiled_uint8, to_uint8(tiled), atol=1)
    assert np.abs(tiled_uint8.astype(int) - to_uint8(whole)).max() <= 6


def test_tiling_on_odd_sizes_keeps_the_size(net: UNet) -> None:
    image = photo(97, 131, seed=2)
    tiled = Stylizer(net, tile=48, overlap=16)(image)
    assert tiled.shape == image.shape
    assert np.abs(tiled.astype(int) - one_pass(net, image)).mean() < 1.5


@pytest.mark.parametrize("multiple", [1, 8, 32])
def test_tile_spans_cover_overlap_and_stay_on_the_grid(multiple: int) -> None:
    rng = np.random.default_rng(multiple)
    for _ in range(500):
        tile = multiple * int(rng.integers(1, 40))
        overlap = multiple * int(rng.integers(0, tile // multiple))
        length = multiple * int(rng.integers(1, 300))
        found = spans(length, tile, overlap, multiple)
        assert found[0][0] == 0 and found[-1][1] == length
        assert len({end - start for start, end in found}) == 1  # one tile shape: one kernel
        for start, end in found:
            assert end - start <= tile and start % multiple == 0 and end % multiple == 0
        for (start, end), (next_start, _) in zip(found, found[1:]):
            assert start < next_start and end - next_start >= overlap
    # 4K height in tiles of 1024: three of 768 spread evenly, not 1024s piled at the edge.
    assert spans(2176, 1024, 64, 32) == [(0, 768), (704, 1472), (1408, 2176)]


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13, 33])
def test_padding_index_equals_torch_pad(length: int) -> None:
    x = torch.arange(float(length)).reshape(1, 1, 1, length)
    pad = (-length) % 8
    for reflect in (True, False):
        if reflect and pad - pad // 2 >= length:
            continue  # torch cannot reflect this far; the replicate rule applies
        index, before = padded_index(length, 8, reflect)
        mode = "reflect" if reflect else "replicate"
        expected = torch.nn.functional.pad(x, (before, pad - before, 0, 0), mode=mode)
        assert index.tolist() == expected.flatten().long().tolist()


# -------------------------------------------------------------------- memory and tile=auto


def test_activation_count_is_exact_for_a_known_net() -> None:
    # conv 3 -> 8 channels: its float32 output (32 B/px) is all it creates; the input is given
    conv = nn.Conv2d(3, 8, 3, padding=1).eval()
    assert activation_bytes_per_pixel(conv, torch.device("cpu")) == 32
    two = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)).eval()
    # peak while the second conv runs: its input (32) and output (16) are alive together
    assert activation_bytes_per_pixel(two, torch.device("cpu")) == 48
    # and it scales with the pixels: the U-Net's figure is the same at any probe size
    unet = tiny_unet()
    counts = []
    for side in (64, 128):
        counter = _LiveTensorBytes()
        with torch.inference_mode(), counter:
            unet(torch.zeros(1, 3, side, side))
        counts.append(counter.peak / side**2)
    assert counts[0] == pytest.approx(counts[1], rel=0.01)


def test_auto_plan_picks_one_pass_or_tiles_from_the_budget(net: UNet) -> None:
    stylizer = Stylizer(net, max_memory_mb=256)
    assert stylizer.plan(512, 768).tile is None
    big = stylizer.plan(4000, 6000)
    assert big.tile is not None and big.tile <= AUTO_TILE_MAX
    assert big.estimated_bytes <= 256 << 20
    # more budget: never smaller tiles; a generous one: one pass
    assert stylizer.plan(4000, 6000, max_memory_mb=512).tile >= big.tile
    assert stylizer.plan(4000, 6000, max_memory_mb=100_000).tile is None
    # the default CPU budget: 4K in tiles of 1024 for the default U-Net (about 330 B/px)
    default = plan_tiles(2160, 3840, net_bytes_per_pixel=236, multiple=32, budget_bytes=2 << 30)
    assert default.tile == 1024 and default.estimated_bytes < 1 << 30


def test_auto_tiles_a_large_image_and_matches_one_pass(
    net: UNet, caplog: pytest.LogCaptureFixture
) -> None:
    image = photo(300, 620, seed=4)
    stylizer = Stylizer(net, max_memory_mb=20)
    plan = stylizer.plan(300, 620)
    assert plan.tile is not None
    seen: list[tuple[int, ...]] = []
    hook = net.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    try:
        out = stylizer(image)
    finally:
        hook.remove()
    assert len(seen) > 1 and all(max(shape[-2:]) <= plan.tile for shape in seen)
    assert out.shape == image.shape
    difference = np.abs(out.astype(int) - one_pass(net, image))
    assert difference.mean() < 0.5 and difference.max() <= 8


def test_tiled_run_makes_no_full_size_float_copy(net: UNet) -> None:
    height, width = 640, 960
    image = photo(height, width, seed=5)
    full_float = height * width * 3 * 4
    counter = _LiveTensorBytes()
    with counter:
        Stylizer(net, tile=128, overlap=32)(image)
    # a tile's activations and a band of one tile row (and its grown copy), no whole image
    assert counter.peak < 0.75 * full_float
    small = image[:256, :384]
    counter = _LiveTensorBytes()
    with counter:
        Stylizer(net, tile=None)(small)
    assert counter.peak > small.size * 4  # the counter does see whole-image float tensors


def test_out_of_memory_retries_in_small_tiles(caplog: pytest.LogCaptureFixture) -> None:
    image = photo(400, 600)
    with caplog.at_level(logging.WARNING):
        out = Stylizer(FailingIdentity(max_area=256 * 256), overlap=0)(image, tile="auto")
    np.testing.assert_array_equal(out, image)  # the identity where it runs
    assert any("retrying in tiles" in r.getMessage() for r in caplog.records)
    with pytest.raises(MemoryError):  # an explicit choice is not second-guessed
        Stylizer(FailingIdentity(max_area=256 * 256))(image, tile=None)


# ------------------------------------------------------------------------- loading and info


def write_run(folder: Path, net: nn.Module, *, generator: str, steps: int) -> Path:
    """A train run folder as train.py leaves it: stylizer.pt, .hydra/config.yaml, metrics."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"generator:\n  _target_: {generator}\n"
        "mixer:\n  _target_: portrait_toon.synthesis.procedural.ProceduralMixer\n"
        "task_name: demo\nresolution: 128\n"
    )
    metrics = {"l1_output_target": 0.1, "l1_input_target": 0.2}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return save_stylizer(folder / "stylizer.pt", net, meta={"global_step": steps})


def test_load_from_file_and_run_folder_with_info(tmp_path: Path, net: UNet) -> None:
    old = write_run(
        tmp_path / "runs" / "a", net, generator="portrait_toon.synthesis.procedural.X", steps=5
    )
    os.utime(old, (1_000_000, 1_000_000))
    new = write_run(
        tmp_path / "runs" / "b",
        tiny_unet(seed=3),
        generator="portrait_toon.synthesis.sources.StyleGAN2Generator",
        steps=9,
    )
    assert resolve_checkpoint(tmp_path / "runs") == new  # the newest
    stylizer = Stylizer.load(tmp_path / "runs", device="cpu")
    info = stylizer.info
    assert info["source"] == str(new) and info["steps"] == 9 and info["resolution"] == 128
    assert info["trained_on"] == "real weights" and info["experiment"] == "demo"
    assert info["metrics"] == {"l1_output_target": 0.1, "l1_input_target": 0.2}
    assert stylizer.device == torch.device("cpu") and isinstance(stylizer.net, UNet)

    from_file = Stylizer.load(old)
    assert from_file.info["trained_on"] == "embedded world" and from_file.info["steps"] == 5
    image = photo(40, 56)
    np.testing.assert_array_equal(from_file(image), one_pass(net, image))

    bare = save_stylizer(tmp_path / "loose" / "stylizer.pt", net)
    assert Stylizer.load(bare).info["trained_on"] == "unknown"
    with pytest.raises(FileNotFoundError, match="holds no stylizer.pt"):
        Stylizer.load(tmp_path / "runs" / "a" / ".hydra")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Stylizer.load(tmp_path / "nowhere")


def test_import_is_cheap_and_lazy() -> None:
    code = (
        "import sys, portrait_toon; assert 'torch' not in sys.modules; "
        "from portrait_toon import Stylizer; print(Stylizer.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "Stylizer", done.stderr
