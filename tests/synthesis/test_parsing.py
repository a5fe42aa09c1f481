"""Head and skin masks from label maps: coverage, exclusion, smoothness, erosion."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.nets.bisenet import CLASS_ID, HEAD_CLASS_IDS
from portrait_toon.synthesis.parsing import class_mask, head_mask, skin_mask


def portrait_labels(size: int = 64) -> torch.Tensor:
    """A head disc (skin, nose, eyes), hair cap, neck, cloth below, background: [1, H, W]."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(size, size, dtype=torch.int64)
    cy, cx, r = size * 0.35, size * 0.5, size * 0.18
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    labels[(yy > size * 0.6) & (xx > size * 0.2) & (xx < size * 0.8)] = CLASS_ID["cloth"]
    labels[(yy > cy) & (yy <= size * 0.6) & ((xx - cx).abs() < r * 0.4)] = CLASS_ID["neck"]
    labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= (r * 1.25) ** 2) & (yy < cy)] = CLASS_ID["hair"]
    labels[disc] = CLASS_ID["skin"]
    labels[disc & ((yy - cy).abs() < 2) & ((xx - cx).abs() < 2)] = CLASS_ID["nose"]
    labels[disc & ((yy - (cy - r / 3)).abs() < 1.5) & ((xx - cx).abs() - r / 2.5).abs().lt(1.5)] = (
        CLASS_ID["l_eye"]
    )
    labels[0, 0] = CLASS_ID["hat"]
    return labels[None]


def test_class_mask_exact():
    labels = portrait_labels()
    mask = class_mask(labels, [CLASS_ID["skin"], CLASS_ID["nose"]])
    assert mask.shape == (1, 1, 64, 64) and mask.dtype == torch.float32
    expected = (labels == 1) | (labels == 10)
    assert torch.equal(mask[:, 0].bool(), expected)
    with pytest.raises(ValueError, match="outside the face-parsing table"):
        class_mask(labels, [25])
    with pytest.raises(ValueError, match="label map"):
        class_mask(labels.float(), [1])


def test_head_mask_covers_head_excludes_far_cloth_and_is_smooth():
    labels = portrait_labels()
    mask = head_mask(labels, dilate_px=3, feather_px=3)
    head = torch.isin(labels, torch.tensor(HEAD_CLASS_IDS))
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    # Every head-class pixel is fully inside the mask (neck and hair included).
    assert bool((mask[:, 0][head] == 1.0).all())
    # Away from the dilation + feather band, cloth and background are 0.
    far = ~torch.nn.functional.max_pool2d(head[:, None].float(), 2 * 8 + 1, 1, 8)[:, 0].bool()
    assert bool((mask[:, 0][far] < 1e-3).all())
    assert bool(far[labels == CLASS_ID["cloth"]].any())
    # Hat is not a head class by default (top-left pixel far from the head).
    assert float(mask[0, 0, 0, 0]) == 0.0
    # Feathered: intermediate values exist and neighbouring pixels never jump by ~1.
    assert bool(((mask > 0.05) & (mask < 0.95)).any())
    dx = (mask[..., 1:] - mask[..., :-1]).abs().max()
    dy = (mask[..., 1:, :] - mask[..., :-1, :]).abs().max()
    assert float(max(dx, dy)) < 0.5
    # Without feathering the same mask is a hard 0/1 mask that jumps.
    hard = head_mask(labels, dilate_px=0, feather_px=0)
    assert torch.equal(hard[:, 0].bool(), head)


def test_head_mask_dilation_grows_and_hat_optional():
    labels = portrait_labels()
    small = head_mask(labels, dilate_px=1, feather_px=0)
    large = head_mask(labels, dilate_px=4, feather_px=0)
    assert float(large.sum()) > float(small.sum())
    assert bool((large >= small).all())
    with_hat = head_mask(
        labels, classes=(*HEAD_CLASS_IDS, CLASS_ID["hat"]), dilate_px=0, feather_px=0
    )
    assert float(with_hat[0, 0, 0, 0]) == 1.0


def test_resolution_relative_px():
    labels = portrait_labels(64)
    big = torch.nn.functional.interpolate(labels[:, None].float(), size=128, mode="nearest")
    big = big[:, 0].long()
    small_mask = head_mask(labels, dilate_px=4, feather_px=0, reference_resolution=64)
    big_mask = head_mask(big, dilate_px=4, feather_px=0, reference_resolution=64)
    # 4 px at 64 is 8 px at 128: the mask covers the same fraction of the image.
    assert abs(float(small_mask.mean()) - float(big_mask.mean())) < 0.01


def test_skin_mask_and_erosion():
    labels = portrait_labels()
    skin = skin_mask(labels)
    assert torch.equal(skin[:, 0].bool(), (labels == 1) | (labels == 10))
    eroded = skin_mask(labels, erode_px=2)
    assert float(eroded.sum()) < float(skin.sum()) and float(eroded.sum()) > 0
    assert bool((eroded <= skin).all())
    # Every eroded pixel has its whole 5x5 neighbourhood inside the skin.
    window = -torch.nn.functional.max_pool2d(-skin, 5, 1, 2)
    assert bool((eroded <= window).all())
