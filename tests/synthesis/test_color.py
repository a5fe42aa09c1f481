"""Colour reflection and CIEDE2000: tone moved to the source's, outside untouched, skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000

from portrait_toon.synthesis.color import (
    delta_e00,
    lab_to_rgb,
    masked_lab_stats,
    reflect_skin_tone,
    rgb_to_lab,
)


def rgb(values, size=48, batch=1) -> torch.Tensor:
    """A flat image of sRGB colour `values` (0-255) in [-1, 1]."""
    colour = torch.tensor(values, dtype=torch.float32) / 127.5 - 1.0
    return colour.view(1, 3, 1, 1).expand(batch, 3, size, size).clone()


def scene(size=48, batch=1):
    """Disc head: skin inside radius 10, a hair ring to radius 14; soft head mask."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    skin = (dist <= 10).float()[None, None].expand(batch, 1, size, size).clone()
    head = ((16 - dist) / 2).clamp(0, 1)[None, None].expand(batch, 1, size, size).clone()
    return skin, head


# Sharma, Wu & Dalal (2005) test pairs, with their published CIEDE2000 values.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0009), 7.1792),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_delta_e00_published_values_and_skimage():
    lab1 = torch.tensor([p[0] for p in SHARMA], dtype=torch.float64)
    lab2 = torch.tensor([p[1] for p in SHARMA], dtype=torch.float64)
    expected = torch.tensor([p[2] for p in SHARMA], dtype=torch.float64)
    assert torch.allclose(delta_e00(lab1, lab2, dim=-1), expected, atol=1e-4)
    rng = np.random.default_rng(0)
    a = rng.uniform([0, -90, -90], [100, 90, 90], (500, 3))
    b = rng.uniform([0, -90, -90], [100, 90, 90], (500, 3))
    ours = delta_e00(torch.tensor(a), torch.tensor(b), dim=-1).numpy()
    assert np.allclose(ours, deltaE_ciede2000(a, b), atol=1e-8)
    # Channel axis 1 for images: identical images differ by 0.
    lab = rgb_to_lab(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert delta_e00(lab, lab).shape == (2, 8, 8)
    assert float(delta_e00(lab, lab).max()) == 0.0


def test_lab_round_trip():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(lab_to_rgb(rgb_to_lab(images)), images, atol=1e-4)


@pytest.mark.parametrize("mode", ["mean", "mean_std"])
def test_reflection_moves_skin_mean_to_source(mode):
    skin, head = scene()
    source = rgb((95, 60, 45))  # dark skin photo
    background = rgb((40, 120, 200))
    character = rgb((250, 225, 210))  # whitened cartoon skin
    character[:, :, 14:34, 14:34] += 0.02 * torch.randn(1, 3, 20, 20)  # some shading
    composite = character * head + background * (1 - head)
    out = reflect_skin_tone(composite, source, head, skin, skin, mode=mode, target=character)
    mu_src, _, _ = masked_lab_stats(rgb_to_lab(source), skin)
    mu_out, _, _ = masked_lab_stats(rgb_to_lab(out), skin)
    mu_before, _, _ = masked_lab_stats(rgb_to_lab(composite), skin)
    assert float(delta_e00(mu_before, mu_src)) > 20  # the test is not trivially passing
    assert float(delta_e00(mu_out, mu_src)) < 1.0
    # Outside the head mask: bit-identical, not round-tripped through Lab.
    outside = (head == 0).expand_as(out)
    assert torch.equal(out[outside], composite[outside])


def test_default_target_is_composite_and_batch_is_per_image():
    skin, head = scene(batch=2)
    source = torch.cat([rgb((95, 60, 45)), rgb((230, 190, 160))])
    composite = rgb((250, 225, 210), batch=2) * head + rgb((0, 90, 20), batch=2) * (1 - head)
    out = reflect_skin_tone(composite, source, head, skin, skin)
    for i in range(2):
        mu_src, _, _ = masked_lab_stats(rgb_to_lab(source[i : i + 1]), skin[i : i + 1])
        mu_out, _, _ = masked_lab_stats(rgb_to_lab(out[i : i + 1]), skin[i : i + 1])
        assert float(delta_e00(mu_out, mu_src)) < 1.0


def test_skipped_when_skin_is_tiny_and_alpha_zero_is_identity():
    skin, head = scene()
    source, composite = rgb((95, 60, 45)), rgb((250, 225, 210))
    tiny = torch.zeros_like(skin)
    tiny[..., 20, 20] = 1.0  # 1 pixel of 48x48 = 0.04 %
    out = reflect_skin_tone(composite, source, head, tiny, skin, min_skin_fraction=0.002)
    assert torch.equal(out, composite)
    out = reflect_skin_tone(composite, source, head, skin, tiny, min_skin_fraction=0.002)
    assert torch.equal(out, composite)
    # Only the image with tiny skin is skipped in a batch.
    both_skin = torch.cat([tiny, skin])
    both = reflect_skin_tone(
        composite.repeat(2, 1, 1, 1),
        source.repeat(2, 1, 1, 1),
        head.repeat(2, 1, 1, 1),
        both_skin,
        both_skin,
    )
    assert torch.equal(both[0], composite[0]) and not torch.equal(both[1], composite[0])
    # alpha = 0: colours unchanged (up to the Lab round trip inside the head).
    out = reflect_skin_tone(composite, source, head, skin, skin, alpha=(0.0, 0.0, 0.0))
    assert torch.allclose(out, composite, atol=1e-4)


def test_alpha_selects_channels():
    skin, head = scene()
    source, composite = rgb((95, 60, 45)), rgb((250, 225, 210))
    out = reflect_skin_tone(composite, source, head, skin, skin, alpha=(1.0, 0.0, 0.0))
    lab_in, _, _ = masked_lab_stats(rgb_to_lab(composite), skin)
    lab_src, _, _ = masked_lab_stats(rgb_to_lab(source), skin)
    lab_out, _, _ = masked_lab_stats(rgb_to_lab(out), skin)
    assert abs(float(lab_out[0, 0] - lab_src[0, 0])) < 1.0  # L moved
    assert abs(float(lab_out[0, 1] - lab_in[0, 1])) < 1.0  # a kept
    assert abs(float(lab_out[0, 2] - lab_in[0, 2])) < 1.0  # b kept


def test_bad_arguments():
    skin, head = scene()
    image = rgb((10, 10, 10))
    with pytest.raises(ValueError, match="mode"):
        reflect_skin_tone(image, image, head, skin, skin, mode="median")
    with pytest.raises(ValueError, match="alpha"):
        reflect_skin_tone(image, image, head, skin, skin, alpha=(1.0, 1.0))
    with pytest.raises(ValueError, match="head_mask"):
        reflect_skin_tone(image, image, head[..., :10], skin, skin)
