"""Masks from face-parsing label maps: the head mask (dilated + feathered) and the skin mask.

Labels are int64 [B, H, W] with the CelebAMask-HQ class ids of `portrait_toon.nets.bisenet`;
masks are float [B, 1, H, W] in [0, 1] (docs/method.md §1.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F

from portrait_toon.nets.bisenet import CELEBAMASK_CLASSES, HEAD_CLASS_IDS, SKIN_CLASS_IDS

__all__ = [
    "HEAD_CLASS_IDS",
    "SKIN_CLASS_IDS",
    "class_mask",
    "dilate",
    "erode",
    "feather",
    "head_mask",
    "scaled_px",
    "skin_mask",
]


def _check_labels(labels: torch.Tensor) -> None:
    if labels.dim() != 3 or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be an integer label map [B, H, W], got dtype {labels.dtype} "
            f"and shape {tuple(labels.shape)}"
        )


def _check_class_ids(class_ids: Sequence[int]) -> list[int]:
    ids = [int(c) for c in class_ids]
    bad = [c for c in ids if not 0 <= c < len(CELEBAMASK_CLASSES)]
    if bad:
        raise ValueError(
            f"class ids {bad} are outside the face-parsing table 0..{len(CELEBAMASK_CLASSES) - 1} "
            f"({', '.join(f'{i}={n}' for i, n in enumerate(CELEBAMASK_CLASSES))})"
        )
    return ids


def scaled_px(px: float, size: tuple[int, int], reference_resolution: int | None) -> float:
    """`px` given at `reference_resolution` (short side), rescaled to an image of `size`.

    With `reference_resolution=None` the value is taken as-is (absolute pixels).
    """
    if reference_resolution is None:
        return float(px)
    return float(px) * min(size) / float(reference_resolution)


def class_mask(labels: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """1 where the label is one of `class_ids`, else 0: float [B, 1, H, W]."""
    _check_labels(labels)
    ids = torch.tensor(_check_class_ids(class_ids), dtype=labels.dtype, device=labels.device)
    return torch.isin(labels, ids).unsqueeze(1).float()


def dilate(mask: torch.Tensor, radius_px: float) -> torch.Tensor:
    """Grey-level dilation with a (2r+1)^2 square (max-pool; cheap on any device)."""
    radius = int(round(radius_px))
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def erode(mask: torch.Tensor, radius_px: float) -> torch.Tensor:
    """Grey-level erosion with a (2r+1)^2 square; the image border counts as outside."""
    radius = int(round(radius_px))
    if radius <= 0:
        return mask
    # max-pool pads with -inf, i.e. the border would count as inside: pad with zeros first.
    padded = F.pad(mask, (radius, radius, radius, radius), value=0.0)
    return -F.max_pool2d(-padded, kernel_size=2 * radius + 1, stride=1)


def feather(mask: torch.Tensor, feather_px: float) -> torch.Tensor:
    """Gaussian blur with sigma = feather_px / 2: the 0->1 ramp is about 2 * feather_px wide."""
    if feather_px <= 0:
        return mask
    sigma = feather_px / 2.0
    radius = max(1, math.ceil(3.0 * sigma))
    # Clamp the kernel to the image so reflect padding stays valid on tiny images.
    radius = min(radius, (min(mask.shape[-2:]) - 1) // 2) if min(mask.shape[-2:]) > 2 else 0
    if radius <= 0:
        return mask
    kernel = 2 * radius + 1
    return kornia.filters.gaussian_blur2d(
        mask, (kernel, kernel), (sigma, sigma), border_type="replicate"
    )


def head_mask(
    labels: torch.Tensor,
    classes: Sequence[int] = HEAD_CLASS_IDS,
    dilate_px: float = 4.0,
    feather_px: float = 4.0,
    reference_resolution: int | None = None,
) -> torch.Tensor:
    """The region that gets cartoonised: head classes, dilated then feathered, [B, 1, H, W].

    Dilation first so the feather ramp falls outside the parsed head (hair strands and the
    parser's ragged border stay cartoon), then a Gaussian feather so no seam shows where the
    cartoon meets the stylised background. The parsed head itself is kept at exactly 1 (a
    max with the hard mask): colour reflection and compositing use the full character there.
    `dilate_px`/`feather_px` are pixels at `reference_resolution` (short side) when it is set,
    otherwise absolute pixels.
    """
    hard = class_mask(labels, classes)
    size = (labels.shape[-2], labels.shape[-1])
    grown = dilate(hard, scaled_px(dilate_px, size, reference_resolution))
    soft = feather(grown, scaled_px(feather_px, size, reference_resolution))
    return torch.maximum(soft, hard).clamp_(0.0, 1.0)


def skin_mask(
    labels: torch.Tensor,
    classes: Sequence[int] = SKIN_CLASS_IDS,
    erode_px: float = 0.0,
    reference_resolution: int | None = None,
) -> torch.Tensor:
    """Skin (face skin + nose by default) as a hard float mask, optionally eroded so that
    the measured tone stays away from hair, shadows and parser borders."""
    mask = class_mask(labels, classes)
    size = (labels.shape[-2], labels.shape[-1])
    return erode(mask, scaled_px(erode_px, size, reference_resolution))
