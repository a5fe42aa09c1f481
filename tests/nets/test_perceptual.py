"""Perceptual distances: the shift-tolerant LPIPS file loads strictly into our module, distances
are zero for identical images and grow with noise and blur, and the cost knobs keep the value."""

from __future__ import annotations

import importlib.util

import kornia
import pytest
import torch

from portrait_toon.nets.perceptual import (
    MissingPerceptualWeightsError,
    ShiftTolerantLPIPS,
    VGGPerceptual,
    find_stlpips_weights,
)

HAS_STLPIPS = importlib.util.find_spec("stlpips_pytorch") is not None
needs_stlpips = pytest.mark.skipif(
    not HAS_STLPIPS,
    reason="stlpips-pytorch wheel not installed (its weight file is what is tested; "
    "`pip install --no-deps stlpips-pytorch==0.0.2`)",
)


@pytest.fixture(scope="module")
def stlpips() -> ShiftTolerantLPIPS:
    if not HAS_STLPIPS:
        pytest.skip("stlpips-pytorch wheel not installed")
    return ShiftTolerantLPIPS()


def smooth_images(batch: int = 2, size: int = 64) -> torch.Tensor:
    # Natural-ish images: low-frequency structure, so noise and blur change them measurably.
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(-1, 1)


@needs_stlpips
def test_weight_file_loads_strictly(stlpips: ShiftTolerantLPIPS) -> None:
    state = torch.load(find_stlpips_weights(), map_location="cpu", weights_only=True)
    own = stlpips.state_dict()
    assert list(own) == list(state)  # same keys, same order, nothing extra
    assert len(own) == 37
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    assert not any(p.requires_grad for p in stlpips.parameters())


@needs_stlpips
def test_zero_for_identical(stlpips: ShiftTolerantLPIPS) -> None:
    x = smooth_images()
    distance = stlpips(x, x)
    assert distance.shape == (2,)
    assert torch.all(distance.abs() < 1e-6)


@needs_stlpips
def test_grows_with_noise_and_blur(stlpips: ShiftTolerantLPIPS) -> None:
    # One image, one batched call per sweep: row k has the k-th strength.
    x = smooth_images(batch=1).expand(4, -1, -1, -1)
    noise = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(1))
    strengths = torch.tensor([0.02, 0.05, 0.1, 0.2]).view(4, 1, 1, 1)
    by_noise = stlpips((x + strengths * noise).clamp(-1, 1), x).tolist()
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    sharp = (x + 0.3 * noise).clamp(-1, 1)  # add detail that blur can remove
    blurred = torch.cat(
        [kornia.filters.gaussian_blur2d(sharp[:1], (13, 13), (s, s)) for s in (0.5, 1.0, 2.0, 3.0)]
    )
    by_blur = stlpips(blurred, sharp).tolist()
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])), by_blur


@needs_stlpips
def test_tolerates_a_one_pixel_shift_better_than_noise(stlpips: ShiftTolerantLPIPS) -> None:
    x = smooth_images()
    shifted = torch.roll(x, 1, dims=-1)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(
        -1, 1
    )
    assert stlpips(shifted, x).mean() < stlpips(noisy, x).mean()


@needs_stlpips
def test_max_size_equals_manual_downscale(stlpips: ShiftTolerantLPIPS) -> None:
    x = smooth_images(batch=1, size=96)
    y = (x + 0.1).clamp(-1, 1)
    down = torch.nn.functional.interpolate
    x48 = down(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    y48 = down(y, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    expected = stlpips(x48, y48)
    stlpips.max_size = 48
    try:
        torch.testing.assert_close(stlpips(x, y), expected)
    finally:
        stlpips.max_size = None


@needs_stlpips
def test_gradient_reaches_output_not_target(stlpips: ShiftTolerantLPIPS) -> None:
    x = smooth_images().requires_grad_(True)
    y = (smooth_images() * 0.5).requires_grad_(True)
    stlpips(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None  # target features are computed without autograd


def test_missing_or_wrong_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(MissingPerceptualWeightsError, match="not found"):
        ShiftTolerantLPIPS(weights_path=tmp_path / "absent.pth")
    bad = ShiftTolerantLPIPS(pretrained=False).state_dict()
    bad["extra.weight"] = torch.zeros(1)
    del bad["lin0.model.1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"1 missing \['lin0.model.1.weight'\].*1 unexpected"):
        ShiftTolerantLPIPS(weights_path=path)


def test_frozen_modules_stay_in_eval_mode() -> None:
    metric = ShiftTolerantLPIPS(pretrained=False)
    wrapper = torch.nn.Sequential(metric)
    wrapper.train()
    assert not metric.training


def test_vgg_perceptual_random_weights() -> None:
    torch.manual_seed(0)
    metric = VGGPerceptual(pretrained=False, layers=("relu1_2", "relu2_2"))
    x = smooth_images()
    assert torch.all(metric(x, x) == 0)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.all(metric(noisy, x) > 0)
    # only the trunk up to the deepest tap is kept (relu2_2 = features.8)
    assert max(int(k.split(".")[2]) for k in metric.state_dict()) <= 8


def test_vgg_perceptual_needs_its_file() -> None:
    with pytest.raises(MissingPerceptualWeightsError, match="vgg19-dcbb9e9d.pth"):
        VGGPerceptual(weights_path=None)
