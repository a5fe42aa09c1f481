"""Shading shared by the embedded world's photo and character: the base colour of every
(person, material), per-pixel copies of person parameters, the Lambert light on each person's
head ellipsoid and body cylinder, and the exact skin-mean correction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from portrait_toon.synthesis.world.materials import (
    MATERIAL,
    NUM_MATERIALS,
    CharacterLook,
    material_groups,
)


def pixel_params(
    person_map: Tensor, persons: dict[str, Tensor], names: Sequence[str]
) -> list[Tensor]:
    """Per-pixel copies (float32 [B, H, W]) of per-person parameters: those of the person
    drawn at each pixel. One gather for all of them."""
    table = torch.stack([persons[name].to(torch.float32) for name in names], -1)
    return list(table[person_map.clamp(min=0)].unbind(-1))


def head_light(
    person_map: Tensor, persons: dict[str, Tensor], grid_x: Tensor, grid_y: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lambert terms of every pixel on its person's head ellipsoid and body cylinder, and
    the head coordinates (u, v) there."""
    hx, hy, inv_r, cos_t, sin_t = pixel_params(
        person_map, persons, ("head_x", "head_y", "inv_radius", "cos_tilt", "sin_tilt")
    )
    bx = (grid_x - hx) * inv_r
    by = (grid_y - hy) * inv_r
    u = cos_t * bx + sin_t * by
    v = cos_t * by - sin_t * bx
    nx, ny = u / 1.15, (v + 0.1) / 1.45
    nz = (1.0 - nx.square() - ny.square()).clamp(min=0.02).sqrt()
    norm = (nx.square() + ny.square() + nz.square()).sqrt()
    # One light per photo (all its people share it).
    lx, ly, lz = (light.view(-1, 1, 1) for light in persons["scene_light"].unbind(-1))
    head = ((nx * lx + ny * ly + nz * lz) / norm).clamp(0.0, 1.0)
    across = (bx / 2.1).clamp(-1.0, 1.0)
    body = (across * lx + (1.0 - across.square()).sqrt() * lz).clamp(0.0, 1.0)
    return head, body, u, v


def palette(persons: dict[str, Tensor], character: CharacterLook | None) -> Tensor:
    """Base CIELAB colour of every (person, material): [N + 1, M, 3] (last row: unused)."""
    count = persons["radius"].shape[0]
    device = persons["radius"].device
    table = torch.zeros(count + 1, NUM_MATERIALS, 3, device=device)
    is_character = character is not None
    if character is not None:
        skin = torch.tensor(character.skin_lab, device=device).expand(count, 3)
        hair = torch.tensor(character.hair_lab, device=device).expand(count, 3)
        iris = torch.tensor(character.eye_lab, device=device).expand(count, 3)
    else:
        skin, hair, iris = persons["skin_lab"], persons["hair_lab"], persons["iris_lab"]

    def shifted(base: Tensor, dl: float = 0.0, da: float | Tensor = 0.0, db: float = 0.0):
        delta = torch.zeros_like(base)
        delta[:, 0], delta[:, 1], delta[:, 2] = dl, da, db
        return base + delta

    def flat(lab: Sequence[float]) -> Tensor:
        return torch.tensor(lab, device=device).expand(count, 3)

    rows = table[:count]
    rows[:, MATERIAL["face"]] = skin
    rows[:, MATERIAL["nose"]] = shifted(skin, -2.0 if not is_character else -7.0)
    rows[:, MATERIAL["ear_l"]] = rows[:, MATERIAL["ear_r"]] = shifted(skin, -3.0)
    rows[:, MATERIAL["neck"]] = shifted(skin, -7.0 if not is_character else -12.0)
    rows[:, MATERIAL["limb_skin"]] = skin
    rows[:, MATERIAL["blush"]] = shifted(skin, -9.0, 14.0, 2.0)
    brow = hair.clone()
    brow[:, 0] = torch.minimum(hair[:, 0] * 0.8, skin[:, 0] - 14.0).clamp(min=6.0)
    rows[:, MATERIAL["brow_l"]] = rows[:, MATERIAL["brow_r"]] = brow
    sclera = (97.0, 0.0, 0.0) if is_character else (86.0, 0.0, 4.0)
    rows[:, MATERIAL["sclera_l"]] = rows[:, MATERIAL["sclera_r"]] = flat(sclera)
    rows[:, MATERIAL["iris_l"]] = rows[:, MATERIAL["iris_r"]] = iris
    pupil = flat((10.0, 2.0, -4.0)) if not is_character else shifted(iris * 0.35)
    rows[:, MATERIAL["pupil_l"]] = rows[:, MATERIAL["pupil_r"]] = pupil
    rows[:, MATERIAL["shine_l"]] = rows[:, MATERIAL["shine_r"]] = flat((100.0, 0.0, 0.0))
    if is_character:
        lips = shifted(skin, -18.0, 26.0, 6.0)
    else:
        lips = skin.clone()
        lips[:, 0] = skin[:, 0] * 0.85 - 2.0
        lips[:, 1] = skin[:, 1] + persons["lip_redness"]
        lips[:, 2] = skin[:, 2] + 2.0
    rows[:, MATERIAL["lip_upper"]] = shifted(lips, -3.0)
    rows[:, MATERIAL["lip_lower"]] = lips
    mouth = (30.0, 34.0, 14.0) if is_character else (20.0, 20.0, 10.0)
    rows[:, MATERIAL["mouth"]] = flat(mouth)
    rows[:, MATERIAL["hair"]] = hair
    rows[:, MATERIAL["hair_back"]] = shifted(hair, -5.0)
    rows[:, MATERIAL["top"]] = rows[:, MATERIAL["sleeve"]] = persons["top_lab"]
    rows[:, MATERIAL["pants"]] = persons["pants_lab"]
    rows[:, MATERIAL["shoe"]] = persons["shoe_lab"]
    return table


def base_colour(
    palette: Tensor, materials: Tensor, person_map: Tensor, background: Tensor
) -> Tensor:
    """Palette colour at every pixel, the background where no person is drawn: [B,3,H,W]."""
    index = person_map.clamp(min=0) * NUM_MATERIALS + materials.long()
    colour = palette.view(-1, 3)[index].permute(0, 3, 1, 2)
    return torch.where((materials == 0).unsqueeze(1), background, colour)


def correct_skin(
    lab: Tensor, materials: Tensor, labels: Tensor, slot_map: Tensor, target: Tensor
) -> Tensor:
    """Shift each person's skin-toned pixels so that the mean CIELAB over their skin
    (label 1) is exactly `target` [B, P, 3]: the drawn tone is the measured tone whatever
    the shading, texture and occlusion. Plain reductions per (pair, slot), so a pair never
    depends on its batch and GPUs stay deterministic."""
    slots = torch.arange(target.shape[1], device=lab.device).view(1, -1, 1, 1)
    owned = slot_map.unsqueeze(1) == slots  # [B, P, H, W]
    skin = (owned & (labels == 1).unsqueeze(1)).to(lab.dtype)
    count = skin.sum((-1, -2))
    mean = (skin.unsqueeze(2) * lab.unsqueeze(1)).sum((-1, -2)) / count.clamp(min=1.0).unsqueeze(-1)
    shift = torch.where(count.unsqueeze(-1) > 0, target - mean, torch.zeros_like(mean))
    toned = material_groups(materials)["skin"]
    weights = (owned & toned.unsqueeze(1)).to(lab.dtype)  # [B, P, H, W]
    return lab + (weights.unsqueeze(2) * shift.view(*shift.shape, 1, 1)).sum(1)
