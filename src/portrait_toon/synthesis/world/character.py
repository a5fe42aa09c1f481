"""The embedded world's character rendering (CDSM's stand-in): the same scene in the
character's one look, flat cel shading with 2-3 tones, anime hair shine and dark outlines, over
a posterised copy of the photo's background."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from portrait_toon.synthesis.world.materials import (
    MATERIAL,
    MATERIAL_LABEL,
    CharacterLook,
    lookup,
    material_groups,
)
from portrait_toon.synthesis.world.shading import base_colour, head_light, palette


def shade_character(
    materials: Tensor,
    person_map: Tensor,
    persons: dict[str, Tensor],
    background: Tensor,
    grid_x: Tensor,
    grid_y: Tensor,
    character: CharacterLook,
) -> tuple[Tensor, Tensor]:
    """Flat cel shading (2-3 tones), anime hair shine and dark outlines: CIELAB [B,3,H,W]
    and the character's labels."""
    posterised = F.interpolate(
        F.avg_pool2d(background, 4, ceil_mode=True), size=background.shape[-2:],
        mode="bilinear", align_corners=False,
    )  # fmt: skip
    steps = torch.tensor([10.0, 8.0, 8.0], device=background.device).view(1, 3, 1, 1)
    posterised = torch.round(posterised / steps) * steps
    base = base_colour(palette(persons, character), materials, person_map, posterised)
    head, body, u, v = head_light(person_map, persons, grid_x, grid_y)
    groups = material_groups(materials)
    lambert = torch.where(groups["head"], head, body)
    is_hair = groups["hair"]
    is_tone = groups["skin"] | is_hair | groups["cloth"]
    shadow = torch.where(is_tone & (lambert < 0.35), -11.0, 0.0)
    ring = (u / 1.15).square() + ((v + 0.1) / 1.45).square()
    shine = is_hair & (materials == MATERIAL["hair"]) & ((ring - 0.62).abs() < 0.06) & (v < -0.2)
    tone = shadow + torch.where(shine, 16.0, 0.0)
    lab = base.clone()
    lab[:, 0] = (base[:, 0] + tone).clamp(0.0, 100.0)
    labels = lookup(MATERIAL_LABEL, materials)
    # Outlines: every boundary between parts or people, drawn on the non-skin side so the
    # character's skin keeps its flat fill (colour reflection measures its mean).
    region = torch.where(labels == 10, 1, labels) + 32 * (person_map + 1)
    thickness = max(1, round(min(materials.shape[-2:]) / 160))
    edges = boundary(region.float(), thickness)
    skin_side = (labels == 1) | (labels == 10)
    outline = edges & ~skin_side
    ink = torch.tensor(character.outline_lab, device=lab.device).view(1, 3, 1, 1)
    lab = torch.where(outline.unsqueeze(1), ink, lab)
    return lab, labels


def boundary(region: Tensor, thickness: int) -> Tensor:
    """Pixels of a region map [B, H, W] with a different region within `thickness` px along a
    row or column (the frame border is no boundary)."""
    height, width = region.shape[-2:]
    t = thickness
    padded = F.pad(region.unsqueeze(1), (t, t, t, t), mode="replicate")[:, 0]
    found = torch.zeros_like(region, dtype=torch.bool)
    for step in range(1, t + 1):
        for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step)):
            found |= padded[:, t + dy : t + dy + height, t + dx : t + dx + width] != region
    return found
