"""Paired crop/flip: one transform per pair, the same on every tensor, drawn from its seed."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.synthesis.augment import CropParams, paired_crop_flip, sample_crop_params
from portrait_toon.synthesis.latents import pair_seed


def test_params_deterministic_in_range_and_per_pair():
    seeds = pair_seed(0, torch.arange(200), "crop")
    params = sample_crop_params(seeds, (0.6, 0.9), flip=True)
    again = sample_crop_params(seeds[7:8], (0.6, 0.9), flip=True)
    assert float(params.scale[7]) == float(again.scale[0])
    assert bool(params.flip[7]) == bool(again.flip[0])
    assert bool(((params.scale >= 0.6) & (params.scale <= 0.9)).all())
    margin = 1 - params.scale
    assert bool((params.center_x.abs() <= margin + 1e-12).all())
    assert bool((params.center_y.abs() <= margin + 1e-12).all())
    assert 60 < int(params.flip.sum()) < 140
    assert not bool(sample_crop_params(seeds, (0.6, 0.9), flip=False).flip.any())
    with pytest.raises(ValueError, match="scale_range"):
        sample_crop_params(seeds, (0.5, 1.2))


def test_identical_inputs_give_identical_outputs():
    seeds = pair_seed(1, torch.arange(4), "crop")
    params = sample_crop_params(seeds, (0.5, 1.0))
    image = torch.rand(4, 3, 32, 32) * 2 - 1
    mask = image[:, :1].clone()
    src, tgt, out_mask = paired_crop_flip([image, image.clone(), mask], params)
    assert torch.equal(src, tgt)
    assert torch.equal(out_mask, src[:, :1])  # channel count does not change the geometry
    assert not torch.allclose(src, image)


def test_marker_pixel_moves_the_same_way_on_both_sides():
    size = 32
    src = torch.zeros(1, 1, size, size)
    tgt = torch.zeros(1, 3, size, size)
    src[..., 10, 6] = 1.0
    tgt[:, 1, 10, 6] = 1.0
    params = CropParams(
        scale=torch.tensor([0.5], dtype=torch.float64),
        center_x=torch.tensor([-0.5], dtype=torch.float64),  # the left half ...
        center_y=torch.tensor([-0.5], dtype=torch.float64),  # ... of the top half
        flip=torch.tensor([True]),
    )
    out_src, out_tgt = paired_crop_flip([src, tgt], params)
    peak_src = divmod(int(out_src[0, 0].argmax()), size)
    peak_tgt = divmod(int(out_tgt[0, 1].argmax()), size)
    assert peak_src == peak_tgt
    # Top-left quarter scaled 2x then mirrored: (10, 6) -> about (20.5, 31 - 12.5).
    assert abs(peak_src[0] - 20.5) <= 1 and abs(peak_src[1] - 18.5) <= 1


def test_flip_only_mirrors_exactly_and_labels_stay_ids():
    params = CropParams(
        scale=torch.ones(2, dtype=torch.float64),
        center_x=torch.zeros(2, dtype=torch.float64),
        center_y=torch.zeros(2, dtype=torch.float64),
        flip=torch.tensor([True, False]),
    )
    image = torch.rand(2, 3, 16, 24)
    labels = torch.randint(0, 19, (2, 1, 16, 24))
    out, out_labels = paired_crop_flip([image, labels], params)
    assert torch.allclose(out[0], image[0].flip(-1), atol=1e-5)
    assert torch.allclose(out[1], image[1], atol=1e-5)
    assert out_labels.dtype == labels.dtype
    assert torch.equal(out_labels[0], labels[0].flip(-1))


def test_shape_errors():
    params = sample_crop_params(pair_seed(0, torch.arange(2), "crop"))
    with pytest.raises(ValueError, match="every tensor"):
        paired_crop_flip([torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 9)], params)
    with pytest.raises(ValueError, match="crop parameters"):
        paired_crop_flip([torch.rand(3, 3, 8, 8)], params)
