"""The embedded world's backgrounds: six textured families (gradient, sky over ground, stripes,
colour blobs, bokeh, interior) painted in CIELAB from each pair's scene parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from portrait_toon.synthesis.world.noise import uniform_hash, value_noise


def paint_background(
    dev: dict[str, Tensor], batch: int, device: torch.device, size: tuple[int, int]
) -> Tensor:
    """Textured backgrounds in CIELAB [B,3,H,W], rendered at half size (they are smooth)."""
    height, width = size
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    y = ((torch.arange(h2, device=device, dtype=torch.float32) + 0.5) / h2).view(1, 1, -1, 1)
    x = ((torch.arange(w2, device=device, dtype=torch.float32) + 0.5) / h2).view(1, 1, 1, -1)

    def col(name: str) -> Tensor:
        return dev[name].view(batch, 3, 1, 1)

    def scalar(name: str) -> Tensor:
        return dev[name].view(batch, 1, 1, 1)

    kind = dev["bg_type"].view(batch, 1, 1, 1)
    keys = dev["noise_key"]
    coarse = value_noise(keys, 11, 5, (h2, w2))
    fine = value_noise(keys, 12, 16, (h2, w2))
    angle = scalar("bg_angle")
    along = x * torch.cos(angle) + y * torch.sin(angle) + scalar("bg_offset")
    ramp = (along * 0.7 + 0.5).clamp(0.0, 1.0)
    lab = torch.lerp(col("bg_color_a"), col("bg_color_b"), ramp)
    # Sky over ground with a noisy tree/hill line.
    horizon = scalar("horizon") - 0.06 * (coarse + 1.0)
    haze = torch.tensor([12.0, 0.0, 14.0], device=device).view(1, 3, 1, 1)
    sky = torch.lerp(col("sky_lab"), col("sky_lab") + haze, (y / scalar("horizon")).clamp(0, 1))
    ground = col("ground_lab") + torch.cat(
        [6.0 * fine, torch.zeros_like(fine).expand(-1, 2, -1, -1)], 1
    )
    treeline = col("ground_lab") * torch.tensor([0.55, 1.2, 0.8], device=device).view(1, 3, 1, 1)
    outdoor = torch.where(y < horizon, sky, torch.where(y < horizon + 0.05, treeline, ground))
    lab = torch.where(kind == 1, outdoor, lab)
    # Stripes (wallpaper, fences).
    wave = torch.sin(2 * math.pi * scalar("bg_freq") * (along + 0.05 * coarse))
    stripe = ((wave * 3.0).clamp(-1.0, 1.0) + 1.0) * 0.5
    lab = torch.where(kind == 2, torch.lerp(lab, col("bg_color_c"), stripe), lab)
    # Soft colour blobs, all at once: [B, K, h, w] weights.
    aspect = width / height
    blob = uniform_hash(keys.view(-1, 1, 1), 20, torch.arange(30, device=device).view(1, 5, 6))
    blob_x, blob_y = blob[..., 0:1, None] * aspect, blob[..., 1:2, None]
    sigma = 0.08 + 0.2 * blob[..., 2:3, None]
    weight = torch.exp(-((x - blob_x).square() + (y - blob_y).square()) / (2 * sigma**2))
    blob_lab = torch.stack(
        [30 + 60 * blob[..., 3], 60 * blob[..., 4] - 30, 70 * blob[..., 5] - 30], -1
    )
    lab = overlay(lab, blob_lab, 0.85 * weight * (kind == 3))
    # Bokeh: soft bright discs (on its own or over any other background).
    bokeh = (kind == 4) | dev["bokeh_extra"].view(batch, 1, 1, 1)
    disc = uniform_hash(keys.view(-1, 1, 1), 40, torch.arange(60, device=device).view(1, 12, 5))
    disc_x, disc_y = disc[..., 0:1, None] * aspect, disc[..., 1:2, None]
    disc_r = 0.02 + 0.07 * disc[..., 2:3, None]
    dist = ((x - disc_x).square() + (y - disc_y).square()).sqrt()
    alpha = ((disc_r - dist) / 0.012).clamp(0.0, 1.0) * (0.25 + 0.4 * disc[..., 3:4, None])
    light = torch.tensor([97.0, 0.0, 8.0], device=device)
    tint = torch.lerp(dev["bg_color_c"].view(batch, 1, 3), light, 0.6 + 0.4 * disc[..., 4:5])
    lab = overlay(lab, tint, alpha * bokeh)
    # Interior: wall, floor with planks, a window.
    floor_y = scalar("floor")
    planks = (torch.sin(2 * math.pi * 12.0 * x / (y - floor_y + 0.3)) > 0.9).float()
    floor = col("bg_color_b") * torch.tensor([0.6, 1, 1], device=device).view(1, 3, 1, 1)
    floor = floor - torch.cat([8.0 * planks, torch.zeros_like(planks).expand(-1, 2, -1, -1)], 1)
    room = torch.where(y > floor_y, floor, col("bg_color_a"))
    in_window = (
        (
            (x - scalar("window_x") * (width / height) - scalar("window_w") / 2).abs()
            < scalar("window_w") / 2
        )
        & ((y - scalar("window_y") - scalar("window_h") / 2).abs() < scalar("window_h") / 2)
        & (y < floor_y)
    )
    room = torch.where(in_window, col("sky_lab"), room)
    lab = torch.where(kind == 5, room, lab)
    # Mild texture everywhere, then up to full size.
    lab = lab + torch.cat([scalar("bg_texture") * (0.6 * coarse + 0.4 * fine),
                           torch.zeros_like(coarse).expand(-1, 2, -1, -1)], 1)  # fmt: skip
    lab = F.interpolate(lab, size=(height, width), mode="bilinear", align_corners=False)
    lab[:, 0].clamp_(0.0, 100.0)
    return lab


def overlay(image: Tensor, colours: Tensor, alpha: Tensor) -> Tensor:
    """Paint K translucent layers over `image` [B,3,h,w] in order: colours [B,K,3], alpha
    [B,K,h,w]. Closed form of K successive lerps: each layer is seen through the ones above."""
    through = torch.flip(torch.cumprod(torch.flip(1.0 - alpha, (1,)), 1), (1,))  # prod_{j>=k}
    above = torch.cat([through[:, 1:], torch.ones_like(through[:, :1])], 1)  # prod_{j>k}
    layers = ((alpha * above).unsqueeze(2) * colours[..., None, None]).sum(1)
    return image * through[:, :1] + layers
