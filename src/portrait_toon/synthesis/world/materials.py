"""The embedded world's materials: what can be drawn, its parse label and shading group, the
colour tables of hair, eyes and skin, and the body's proportions.

Geometry is painted into per-person material maps (uint8); colour, shading and the parse label
of every pixel are then looked up from its material ("deferred shading"), so the labels are
exactly what is drawn and the cost does not grow with the number of parts. Face-parsing ids as
in portrait_toon.nets.bisenet.CELEBAMASK_CLASSES; "l_" parts are the ones on the image's left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from kornia.color import rgb_to_lab
from torch import Tensor

MATERIALS: tuple[tuple[str, int], ...] = (
    ("none", 0),
    ("face", 1),
    ("nose", 10),
    ("ear_l", 7),
    ("ear_r", 8),
    ("neck", 14),
    ("limb_skin", 1),  # hands and bare forearms: a face parser calls them skin too
    ("brow_l", 2),
    ("brow_r", 3),
    ("sclera_l", 4),
    ("sclera_r", 5),
    ("iris_l", 4),
    ("iris_r", 5),
    ("pupil_l", 4),
    ("pupil_r", 5),
    ("shine_l", 4),
    ("shine_r", 5),
    ("lip_upper", 12),
    ("lip_lower", 13),
    ("mouth", 11),
    ("blush", 1),
    ("hair", 17),
    ("hair_back", 17),
    ("top", 16),
    ("sleeve", 16),
    ("pants", 16),
    ("shoe", 16),
)
MATERIAL = {name: index for index, (name, _) in enumerate(MATERIALS)}
NUM_MATERIALS = len(MATERIALS)
MATERIAL_LABEL = torch.tensor([label for _, label in MATERIALS], dtype=torch.int64)
# Materials coloured with the person's skin tone (shifted together by the exact-mean correction).
_SKIN_TONED = ("face", "nose", "ear_l", "ear_r", "neck", "limb_skin", "blush")
# Materials shaded as part of the head ellipsoid; the rest as upright cylinders (body).
_HEAD_SHADED = (
    "face", "nose", "ear_l", "ear_r", "brow_l", "brow_r", "sclera_l", "sclera_r", "iris_l",
    "iris_r", "pupil_l", "pupil_r", "shine_l", "shine_r", "lip_upper", "lip_lower", "mouth",
    "blush", "hair",
)  # fmt: skip
_HAIR = ("hair", "hair_back")
_CLOTH = ("top", "sleeve", "pants", "shoe")
GROUPS: dict[str, tuple[str, ...]] = {
    "head": _HEAD_SHADED,
    "hair": _HAIR,
    "cloth": _CLOTH,
    "top": ("top", "sleeve"),
    "skin": _SKIN_TONED,
}
# One bit per group for every material, so all group masks come from a single lookup.
GROUP_BITS = torch.tensor(
    [
        sum(1 << i for i, members in enumerate(GROUPS.values()) if name in members)
        for name, _ in MATERIALS
    ],
    dtype=torch.int64,
)

HAIR_COLORS: dict[str, tuple[float, float, float]] = {
    # CIELAB centres; each person gets a small jitter around them.
    "black": (14.0, 1.0, 1.0),
    "brown": (30.0, 8.0, 16.0),
    "blond": (66.0, 5.0, 28.0),
    "red": (40.0, 27.0, 33.0),
    "grey": (66.0, 0.0, 2.0),
}
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bun", "curly", "buzz")
IRIS_LAB = ((22.0, 6.0, 10.0), (34.0, 12.0, 22.0), (52.0, -4.0, -22.0), (48.0, -14.0, 16.0))

# Body layout in units of r (half the face width), relative to the head centre, y down.
SHOULDER = (1.75, 2.6)
UPPER_ARM, FOREARM = 3.0, 2.7
HIP = (0.85, 7.0)
LEG = 7.0
FIGURE_BOTTOM = 14.8  # feet (with shoes) below the head centre, in r


def lookup(table: Tensor, materials: Tensor) -> Tensor:
    """`table[material]` at every pixel of a material map."""
    return table.to(materials.device)[materials.long()]


def material_groups(materials: Tensor) -> dict[str, Tensor]:
    """Boolean [B, H, W] masks of the material groups, from one table lookup."""
    bits = lookup(GROUP_BITS, materials)
    return {name: (bits & (1 << i)) != 0 for i, name in enumerate(GROUPS)}


def skin_lab_from_ita(ita_deg: Tensor, b_jitter: Tensor | None = None) -> Tensor:
    """CIELAB skin colours along a realistic skin locus with the given ITA (degrees): [..., 3].

    b* peaks (~22) for intermediate tones and falls (~13) towards very light and very dark skin,
    as in colorimetric skin surveys; L* then follows exactly from ITA = atan((L*-50)/b*).
    """
    ita_rad = torch.deg2rad(ita_deg)
    b_star = 13.0 + 9.0 * torch.cos(ita_deg * (math.pi / 120.0)) ** 2
    if b_jitter is not None:
        b_star = b_star + b_jitter
    l_star = 50.0 + b_star * torch.tan(ita_rad)
    a_star = torch.full_like(b_star, 11.0)
    return torch.stack([l_star, a_star, b_star], dim=-1)


def rgb255_to_lab(rgb: Sequence[float], name: str) -> tuple[float, float, float]:
    """An sRGB 0-255 triple as CIELAB; `name` is the option named in the error."""
    values = [float(v) for v in rgb]
    if len(values) != 3 or not all(0.0 <= v <= 255.0 for v in values):
        raise ValueError(f"ProceduralWorld: {name} must be three numbers in [0, 255], got {rgb!r}")
    lab = rgb_to_lab(torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1) / 255.0)
    return tuple(float(v) for v in lab.view(3))


@dataclass(frozen=True)
class CharacterLook:
    """The character's one look: CIELAB colours of its skin, hair, eyes and outlines, and its
    head proportions relative to the photo's (skull, chin, eyes)."""

    skin_lab: tuple[float, float, float]
    hair_lab: tuple[float, float, float]
    eye_lab: tuple[float, float, float]
    outline_lab: tuple[float, float, float]
    head_scale: float
    chin_scale: float
    eye_scale: float
