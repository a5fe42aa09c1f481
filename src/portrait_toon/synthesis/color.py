"""Colour reflection (docs/method.md §2): keep the user's skin tone instead of the character's.

`Lab(X_cr) = Lab(X_fb) + M_head * alpha o (mu_s - mu_t)` in CIELAB (D65, kornia), plus the
CIEDE2000 colour difference `delta_e00` that the tests and the evaluation use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kornia
import torch

log = logging.getLogger(__name__)

__all__ = [
    "delta_e00",
    "lab_to_rgb",
    "masked_lab_stats",
    "reflect_skin_tone",
    "rgb_to_lab",
]

REFLECTION_MODES = ("mean", "mean_std")


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """sRGB images in [-1, 1] [B, 3, H, W] -> CIELAB (D65): L in [0, 100], a/b about +-128."""
    return kornia.color.rgb_to_lab(((images + 1.0) * 0.5).clamp(0.0, 1.0))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) -> sRGB in [-1, 1], out-of-gamut values clipped."""
    return kornia.color.lab_to_rgb(lab, clip=True) * 2.0 - 1.0


def masked_lab_stats(
    lab: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted per-image Lab mean and std over a soft mask, and the mask's area fraction.

    Returns `(mean [B, 3], std [B, 3], fraction [B])`; images with an empty mask get mean 0.
    """
    weight = mask.to(lab.dtype)
    total = weight.sum(dim=(1, 2, 3))
    denom = total.clamp_min(eps)[:, None]
    mean = (lab * weight).sum(dim=(2, 3)) / denom
    var = ((lab - mean[:, :, None, None]) ** 2 * weight).sum(dim=(2, 3)) / denom
    fraction = total / float(mask.shape[-2] * mask.shape[-1])
    return mean, var.clamp_min(0.0).sqrt(), fraction


def reflect_skin_tone(
    composite: torch.Tensor,
    source: torch.Tensor,
    head_mask: torch.Tensor,
    source_skin_mask: torch.Tensor,
    target_skin_mask: torch.Tensor,
    alpha: Sequence[float] = (1.0, 1.0, 1.0),
    min_skin_fraction: float = 0.002,
    mode: str = "mean",
    target: torch.Tensor | None = None,
    std_ratio_range: tuple[float, float] = (0.5, 2.0),
) -> torch.Tensor:
    """Shift the head of `composite` (X_fb) so that its skin takes the tone of `source` (X_src).

    `mu_s` = mean Lab of `source` over `source_skin_mask`; `mu_t` = mean Lab of `target`
    (X_cdsm; defaults to `composite`, which equals it on the head) over `target_skin_mask`.
    mode "mean": `Lab' = Lab + M_head * alpha o (mu_s - mu_t)`.
    mode "mean_std": the head is matched in mean and spread,
    `Lab' = Lab + M_head * alpha o (mu_s + (Lab - mu_t) * sigma_s / sigma_t - Lab)`
    (ratio clamped to `std_ratio_range`). Per-channel `alpha` selects/weights L, a, b
    (e.g. (1, 0, 1) for L and b only). Lab is clipped to L in [0, 100] and converted back.
    An image is left unchanged when either skin region covers less than `min_skin_fraction`
    of it. Pixels with `head_mask == 0` are returned bit-identical (never round-tripped
    through Lab). All images [-1, 1] [B, 3, H, W]; masks [B, 1, H, W].
    """
    if mode not in REFLECTION_MODES:
        raise ValueError(f"color_reflection.mode must be one of {REFLECTION_MODES}, got {mode!r}")
    if len(alpha) != 3:
        raise ValueError(f"color_reflection.alpha needs 3 values (L, a, b), got {list(alpha)}")
    for name, mask in (
        ("head_mask", head_mask),
        ("source_skin_mask", source_skin_mask),
        ("target_skin_mask", target_skin_mask),
    ):
        if mask.shape[1] != 1 or mask.shape[-2:] != composite.shape[-2:]:
            raise ValueError(
                f"{name} must be [B, 1, H, W] matching the images {tuple(composite.shape)}, "
                f"got {tuple(mask.shape)}"
            )
    target = composite if target is None else target

    mu_s, sigma_s, frac_s = masked_lab_stats(rgb_to_lab(source), source_skin_mask)
    mu_t, sigma_t, frac_t = masked_lab_stats(rgb_to_lab(target), target_skin_mask)
    apply = (frac_s >= min_skin_fraction) & (frac_t >= min_skin_fraction)
    if not bool(apply.any()):
        log.debug("colour reflection skipped for the whole batch (skin regions too small)")
        return composite

    alpha_t = torch.tensor(list(alpha), dtype=composite.dtype, device=composite.device)
    alpha_t = alpha_t.view(1, 3, 1, 1)
    lab = rgb_to_lab(composite)
    if mode == "mean":
        shift = (mu_s - mu_t)[:, :, None, None].expand_as(lab)
    else:
        low, high = std_ratio_range
        ratio = (sigma_s / sigma_t.clamp_min(1e-3)).clamp(low, high)[:, :, None, None]
        matched = mu_s[:, :, None, None] + (lab - mu_t[:, :, None, None]) * ratio
        shift = matched - lab
    weight = head_mask * apply.to(head_mask.dtype)[:, None, None, None]
    shifted = lab + weight * alpha_t * shift
    # Clip L to its range; a/b are left to lab_to_rgb's gamut clip.
    shifted = torch.cat([shifted[:, :1].clamp(0.0, 100.0), shifted[:, 1:]], dim=1)
    corrected = lab_to_rgb(shifted)
    return torch.where(weight > 0, corrected, composite)


def delta_e00(
    lab1: torch.Tensor,
    lab2: torch.Tensor,
    dim: int = 1,
    k_l: float = 1.0,
    k_c: float = 1.0,
    k_h: float = 1.0,
) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) between Lab tensors.

    `dim` is the channel axis holding (L, a, b): 1 for [B, 3, H, W] images or [B, 3] means,
    -1 for [..., 3]. Returns the difference with that axis removed.
    """
    if lab1.shape[dim] != 3 or lab2.shape[dim] != 3:
        raise ValueError(
            f"delta_e00: axis {dim} must hold (L, a, b), got shapes {tuple(lab1.shape)} "
            f"and {tuple(lab2.shape)}"
        )
    l1, a1, b1 = lab1.unbind(dim)
    l2, a2, b2 = lab2.unbind(dim)
    c1 = torch.sqrt(a1**2 + b1**2)
    c2 = torch.sqrt(a2**2 + b2**2)
    c_bar7 = ((c1 + c2) / 2) ** 7
    g = 0.5 * (1 - torch.sqrt(c_bar7 / (c_bar7 + 25.0**7)))
    a1p = (1 + g) * a1
    a2p = (1 + g) * a2
    c1p = torch.sqrt(a1p**2 + b1**2)
    c2p = torch.sqrt(a2p**2 + b2**2)
    # Hue angles in degrees [0, 360); atan2(0, 0) = 0 as the standard asks.
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360.0
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360.0

    d_l = l2 - l1
    d_c = c2p - c1p
    chroma_zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_h = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh) / 2)

    l_bar = (l1 + l2) / 2
    c_bar_p = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() <= 180,
        h_sum / 2,
        torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2),
    )
    h_bar = torch.where(chroma_zero, h_sum, h_bar)
    t = (
        1
        - 0.17 * torch.cos(torch.deg2rad(h_bar - 30))
        + 0.24 * torch.cos(torch.deg2rad(2 * h_bar))
        + 0.32 * torch.cos(torch.deg2rad(3 * h_bar + 6))
        - 0.20 * torch.cos(torch.deg2rad(4 * h_bar - 63))
    )
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    c_bar_p7 = c_bar_p**7
    r_c = 2 * torch.sqrt(c_bar_p7 / (c_bar_p7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * c_bar_p
    s_h = 1 + 0.015 * c_bar_p * t
    r_t = -torch.sin(torch.deg2rad(2 * d_theta)) * r_c
    term_l = d_l / (k_l * s_l)
    term_c = d_c / (k_c * s_c)
    term_h = d_h / (k_h * s_h)
    return torch.sqrt(term_l**2 + term_c**2 + term_h**2 + r_t * term_c * term_h)
