"""Multi-scale PatchGAN: one logit map per scale with the expected shapes, spectral norm on."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from portrait_toon.nets.patchgan import MultiScalePatchGAN


def conv_out(size: int, stride: int) -> int:
    return (size + 2 - 4) // stride + 1


def expected_map(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = conv_out(size, 2)
    return conv_out(conv_out(size, 1), 1)


@pytest.mark.parametrize(("num_scales", "n_layers"), [(2, 3), (3, 2)])
def test_scale_shapes(num_scales: int, n_layers: int) -> None:
    d = MultiScalePatchGAN(num_scales=num_scales, base_channels=8, n_layers=n_layers)
    x = torch.rand(2, 3, 128, 96) * 2 - 1
    maps = d(x)
    assert len(maps) == num_scales
    height, width = 128, 96
    for logits in maps:
        assert logits.shape == (2, 1, expected_map(height, n_layers), expected_map(width, n_layers))
        height, width = (height + 1) // 2, (width + 1) // 2
    # finest first: each scale's map is smaller than the previous one
    assert [m.shape[-1] for m in maps] == sorted((m.shape[-1] for m in maps), reverse=True)


def test_spectral_norm_is_applied_and_optional() -> None:
    with_sn = MultiScalePatchGAN(base_channels=8)
    convs = [m for m in with_sn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(c, "weight") for c in convs)
    without = MultiScalePatchGAN(base_channels=8, spectral_norm=False)
    assert not any(parametrize.is_parametrized(m) for m in without.modules())


def test_spectral_norm_bounds_the_weights() -> None:
    torch.manual_seed(0)
    d = MultiScalePatchGAN(base_channels=8, num_scales=1)
    d.train()
    x = torch.rand(1, 3, 64, 64)
    for _ in range(20):  # power iterations converge in training-mode forwards
        d(x)
    for module in d.modules():
        if isinstance(module, torch.nn.Conv2d):
            weight = module.weight.flatten(1)
            assert torch.linalg.matrix_norm(weight, ord=2) < 1.05


def test_gradients_reach_the_input() -> None:
    d = MultiScalePatchGAN(base_channels=8, num_scales=2)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    sum(m.mean() for m in d(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_conditional_input_channels() -> None:
    d = MultiScalePatchGAN(in_channels=6, base_channels=8)
    assert d.in_channels == 6
    assert d(torch.zeros(1, 6, 64, 64))[0].shape[1] == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_scales"):
        MultiScalePatchGAN(num_scales=0)
