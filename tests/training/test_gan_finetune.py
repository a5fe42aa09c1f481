"""Few-shot StyleGAN2 fine-tuning (G_t): DiffAugment, the ADA controller, and the Lightning
module on a tiny generator with the embedded world's character faces."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.training.diffaugment import (
    AdaptiveAugmentProbability,
    DiffAugment,
    cutout_mask,
    translate,
)


# ---------------------------------------------------------------------------------------------
# DiffAugment
def _images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_diffaugment_applies_each_samples_own_op_consistently_across_the_batch() -> None:
    augment = DiffAugment("color,translation,cutout")
    images = _images(6)
    params = augment.sample_params(6, (16, 16), p=1.0, generator=torch.Generator().manual_seed(3))
    batched = augment.apply(images, params)
    for i in range(6):
        alone = augment.apply(images[i : i + 1], params.select(i))
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-6)
    # the same parameters on another batch give the same geometric op: translation + cutout of
    # a constant image is a mask that must be identical for every channel and for both inputs
    geometric = DiffAugment("translation,cutout")
    ones = geometric.apply(torch.ones(6, 3, 16, 16), params)
    twos = geometric.apply(torch.full((6, 3, 16, 16), 2.0), params)
    torch.testing.assert_close(twos, 2 * ones)
    assert torch.equal(ones[:, 0], ones[:, 1]) and torch.equal(ones[:, 1], ones[:, 2])
    # every sample got a different draw (per-sample randomness, not one op for the batch)
    assert len({tuple(t.tolist()) for t in params.translation}) > 1
    assert params.brightness.unique().numel() == 6


def test_translation_is_an_exact_integer_shift_with_zero_fill() -> None:
    images = _images(2, 8)
    shifted = translate(images, torch.tensor([[2, -3], [0, 1]]))
    # sample 0: down 2, left 3
    torch.testing.assert_close(shifted[0, :, 2:, :5], images[0, :, :6, 3:], rtol=0, atol=0)
    assert shifted[0, :, :2].abs().sum() == 0 and shifted[0, :, :, 5:].abs().sum() == 0
    # sample 1: right 1
    torch.testing.assert_close(shifted[1, :, :, 1:], images[1, :, :, :7], rtol=0, atol=0)
    assert shifted[1, :, :, 0].abs().sum() == 0


def test_cutout_zeroes_one_square_of_the_configured_size_in_every_channel() -> None:
    augment = DiffAugment("cutout", cutout_ratio=0.5)
    params = augment.sample_params(32, (16, 16), generator=torch.Generator().manual_seed(1))
    mask = cutout_mask(params)
    assert mask.shape == (32, 1, 16, 16)
    out = augment.apply(torch.ones(32, 3, 16, 16), params)
    for i in range(32):
        cy, cx = params.cutout_center[i].tolist()
        rows = range(max(0, cy - 4), min(16, cy + 4))
        cols = range(max(0, cx - 4), min(16, cx + 4))
        expected = torch.ones(16, 16)
        expected[rows.start : rows.stop, cols.start : cols.stop] = 0
        for channel in range(3):
            assert torch.equal(out[i, channel], expected)


def test_probability_zero_is_identity_and_p_controls_the_fraction_augmented() -> None:
    augment = DiffAugment()
    images = _images(8)
    assert torch.equal(augment(images, p=0.0), images)
    params = augment.sample_params(
        4000, (16, 16), p=0.5, generator=torch.Generator().manual_seed(0)
    )
    fraction_colour = (params.brightness != 0).float().mean().item()
    fraction_cutout = params.cutout_on.float().mean().item()
    assert 0.45 < fraction_colour < 0.55 and 0.45 < fraction_cutout < 0.55
    everything = augment.sample_params(64, (16, 16), p=1.0, generator=torch.Generator())
    assert bool(everything.cutout_on.all()) and bool((everything.saturation != 1).all())


def test_diffaugment_is_seeded_and_differentiable() -> None:
    augment = DiffAugment()
    images = _images(3)
    first = augment(images, generator=torch.Generator().manual_seed(7))
    again = augment(images, generator=torch.Generator().manual_seed(7))
    other = augment(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)

    params = augment.sample_params(2, (6, 6), generator=torch.Generator().manual_seed(2))
    x = (torch.rand(2, 3, 6, 6, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: augment.apply(t, params), (x,))
    # gradient reaches the input through all three ops (pixels not cut/shifted out)
    augment.apply(x, params).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_policy_op_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        DiffAugment("color,rotate")


# ---------------------------------------------------------------------------------------------
# ADA controller
def test_ada_probability_rises_when_d_overfits_and_falls_otherwise() -> None:
    ada = AdaptiveAugmentProbability(target=0.6, speed_kimg=1.0, interval=2, initial_p=0.5)
    confident = torch.full((8,), 3.0)  # sign(D(real)) = +1 everywhere: r_t = 1 > 0.6
    ada.update(confident)
    assert ada.probability == 0.5  # moves only every `interval` updates
    ada.update(confident)
    # 16 images seen / (1 kimg) -> +0.016
    assert ada.probability == pytest.approx(0.516)
    assert float(ada.r_t) == 1.0
    mixed = torch.tensor([1.0, -1.0, 1.0, -1.0])  # r_t = 0 < target
    for _ in range(4):
        ada.update(mixed)
    assert ada.probability == pytest.approx(0.516 - 2 * 0.008)
    for _ in range(1000):
        ada.update(confident)
    assert ada.probability == 1.0  # clamped
    state = ada.state_dict()
    restored = AdaptiveAugmentProbability(target=0.6, speed_kimg=1.0, interval=2)
    restored.load_state_dict(state)
    assert restored.probability == 1.0
