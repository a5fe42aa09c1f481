"""The embedded world's photo: soft Lambert shading with skin, hair and cloth texture, a lens-like
softening of material edges, and camera noise (G_s's stand-in)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb
from torch import Tensor

from portrait_toon.synthesis.world.materials import HAIR_STYLES, material_groups
from portrait_toon.synthesis.world.noise import hash_bits, value_noise
from portrait_toon.synthesis.world.shading import base_colour, head_light, palette, pixel_params


def shade_photo(
    materials: Tensor,
    person_map: Tensor,
    persons: dict[str, Tensor],
    dev: dict[str, Tensor],
    background: Tensor,
    grid_x: Tensor,
    grid_y: Tensor,
) -> Tensor:
    """Soft Lambert shading, skin/hair/cloth texture: the photo in CIELAB [B,3,H,W]."""
    base = base_colour(palette(persons, None), materials, person_map, background)
    head, body, u, v = head_light(person_map, persons, grid_x, grid_y)
    groups = material_groups(materials)
    lambert = torch.where(groups["head"], head, body)
    strength = dev["shade_strength"].view(-1, 1, 1)
    keys = dev["noise_key"]
    size = materials.shape[-2:]
    fine = value_noise(keys, 1, max(4, size[0] // 3), size)[:, 0]
    coarse = value_noise(keys, 2, 6, size)[:, 0]
    is_hair, is_cloth, on_top = groups["hair"], groups["cloth"], groups["top"]
    is_skin = groups["skin"]
    (radius, head_x, part, style, stripes, freq, angle) = pixel_params(
        person_map, persons,
        ("radius", "head_x", "hair_part", "hair_style", "stripes", "stripe_freq",
         "stripe_angle"),
    )  # fmt: skip
    # Shading in L*, centred near the mean of the lit ellipsoid; the exact skin mean is
    # restored afterwards by correct_skin, so the drawn tone is what is measured.
    gain = torch.where(is_skin, 26.0, torch.where(is_hair, 22.0, 20.0))
    light_l = gain * strength * (lambert - 0.6)
    light_l = torch.where(materials == 0, torch.zeros_like(light_l), light_l)
    # Strands radiate from the crown; curly hair gets blotchy noise instead.
    crown = torch.atan2(u - part, v + 1.4)
    strand_freq = math.pi * radius * size[0] * 0.8
    strands = torch.sin(crown * strand_freq + 2.5 * coarse)
    curly = style == float(HAIR_STYLES.index("curly"))
    hair_texture = torch.where(curly, 6.0 * fine, 4.0 * strands + 1.5 * fine)
    bx = (grid_x - head_x) / radius
    by = grid_y / radius
    stripe = torch.sin(freq * (by * torch.cos(angle) + bx * torch.sin(angle))) > 0
    cloth_texture = (
        3.0 * coarse + 1.2 * fine + torch.where((stripes > 0) & stripe & on_top, -22.0, 0.0)
    )
    texture = torch.where(is_hair, hair_texture, torch.where(is_cloth, cloth_texture, 1.2 * fine))
    texture = torch.where(materials == 0, torch.zeros_like(texture), texture)
    lab = base.clone()
    lab[:, 0] = (base[:, 0] + light_l + texture).clamp(0.0, 100.0)
    return lab


def soften(image: Tensor) -> Tensor:
    """A light 5-tap blur (half the pixel kept): anti-aliases hard material edges like a lens.
    Element-wise on a padded copy, so a pair's result never depends on its batch."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    neighbours = (
        padded[..., :-2, 1:-1]
        + padded[..., 2:, 1:-1]
        + padded[..., 1:-1, :-2]
        + padded[..., 1:-1, 2:]
    )
    return 0.5 * image + 0.125 * neighbours


def camera(lab: Tensor, dev: dict[str, Tensor]) -> Tensor:
    """CIELAB -> sRGB, plus camera noise (hashed per pixel), in [-1, 1]."""
    rgb = lab_to_rgb(lab, clip=False)
    batch, _, height, width = rgb.shape
    counter = torch.arange(3 * height * width, device=rgb.device).view(1, 3, height, width)
    keys = dev["noise_key"].view(-1, 1, 1, 1)
    # Sum of two uniforms: a cheap bell-shaped noise with unit variance after scaling.
    bits = hash_bits(keys, 7, counter)
    noise = ((bits & 0xFFFF) + (bits >> 16)).to(torch.float32) * (1.0 / 65536.0) - 1.0
    rgb = rgb + noise * (math.sqrt(6.0) * dev["noise_sigma"].view(-1, 1, 1, 1))
    return rgb.clamp(0.0, 1.0) * 2.0 - 1.0
