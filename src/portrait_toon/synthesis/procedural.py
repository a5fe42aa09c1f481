"""The embedded world: a seeded, batched, pure-torch renderer of portrait "photos", their exact
face-parsing labels and a cartoon "character" rendering of the same scene. It stands in for the
FFHQ StyleGAN2 (`G_s`), CDSM and the face parser when no weights are present (DESIGN.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb, rgb_to_lab
from torch import Tensor, nn

from portrait_toon.synthesis.latents import generator_for

__all__ = [
    "HAIR_COLORS",
    "HAIR_STYLES",
    "ProceduralGenerator",
    "ProceduralMixer",
    "ProceduralSegmenter",
    "ProceduralWorld",
    "Scene",
    "skin_lab_from_ita",
]

# --------------------------------------------------------------------------------------------
# Materials. Geometry is painted into per-person material maps (uint8); colour, shading and the
# parse label of every pixel are then looked up from its material ("deferred shading"), so the
# labels are exactly what is drawn and the cost does not grow with the number of parts.
# Face-parsing ids as in portrait_toon.nets.bisenet.CELEBAMASK_CLASSES; "l_" parts are the ones
# on the image's left.
# --------------------------------------------------------------------------------------------
_MATERIALS: tuple[tuple[str, int], ...] = (
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
_M = {name: index for index, (name, _) in enumerate(_MATERIALS)}
_NUM_MATERIALS = len(_MATERIALS)
_MATERIAL_LABEL = torch.tensor([label for _, label in _MATERIALS], dtype=torch.int64)
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
_GROUPS: dict[str, tuple[str, ...]] = {
    "head": _HEAD_SHADED,
    "hair": _HAIR,
    "cloth": _CLOTH,
    "top": ("top", "sleeve"),
    "skin": _SKIN_TONED,
}
# One bit per group for every material, so all group masks come from a single lookup.
_GROUP_BITS = torch.tensor(
    [
        sum(1 << i for i, members in enumerate(_GROUPS.values()) if name in members)
        for name, _ in _MATERIALS
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
_IRIS_LAB = ((22.0, 6.0, 10.0), (34.0, 12.0, 22.0), (52.0, -4.0, -22.0), (48.0, -14.0, 16.0))

# Body layout in units of r (half the face width), relative to the head centre, y down.
_SHOULDER = (1.75, 2.6)
_UPPER_ARM, _FOREARM = 3.0, 2.7
_HIP = (0.85, 7.0)
_LEG = 7.0
_FIGURE_BOTTOM = 14.8  # feet (with shoes) below the head centre, in r

_SCENE_DRAWS = 64  # uniforms drawn per pair for scene-level parameters
_PERSON_DRAWS = 64  # uniforms drawn per person slot


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


def _rgb255_to_lab(rgb: Sequence[float], name: str) -> tuple[float, float, float]:
    values = [float(v) for v in rgb]
    if len(values) != 3 or not all(0.0 <= v <= 255.0 for v in values):
        raise ValueError(f"ProceduralWorld: {name} must be three numbers in [0, 255], got {rgb!r}")
    lab = rgb_to_lab(torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1) / 255.0)
    return tuple(float(v) for v in lab.view(3))


# --------------------------------------------------------------------------------------------
# Device-side randomness: integer hashing of (pair key, salt, pixel), so per-pixel noise needs no
# generator, costs no host->device copy and is the same on every device and batch composition.
# --------------------------------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF
Value = Tensor | float  # a shape parameter: a number or a tensor broadcastable to the maps


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser on int64 tensors holding values in [0, 2^32) (no overflow:
    every product stays below 2^59)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def _hash_bits(keys: Tensor, salt: int, counter: Tensor) -> Tensor:
    """32 random bits (int64 in [0, 2^32)) per (key [B, 1.., 1], counter [...]) pair."""
    mixed = (keys + _hash32((counter + salt * 0x9E3779B) & _MASK32)) & _MASK32
    return _hash32(mixed)


def _uniform_hash(keys: Tensor, salt: int, counter: Tensor) -> Tensor:
    """Uniform [0, 1) floats: one per (key [B, 1.., 1], counter [...]) pair."""
    return _hash_bits(keys, salt, counter).to(torch.float32) * (1.0 / 4294967296.0)


def _value_noise(keys: Tensor, salt: int, cells: int, size: tuple[int, int]) -> Tensor:
    """Smooth noise in about [-1, 1]: hashed lattice values, bicubic-interpolated. [B, 1, H, W]."""
    height, width = size
    cells_y = max(1, cells)
    cells_x = max(1, round(cells * width / height))
    device = keys.device
    iy = torch.arange(cells_y + 1, device=device).view(1, 1, -1, 1)
    ix = torch.arange(cells_x + 1, device=device).view(1, 1, 1, -1)
    lattice = _uniform_hash(keys.view(-1, 1, 1, 1), salt, iy * 4099 + ix) * 2.0 - 1.0
    return F.interpolate(lattice, size=size, mode="bicubic", align_corners=True)


def _overlay(image: Tensor, colours: Tensor, alpha: Tensor) -> Tensor:
    """Paint K translucent layers over `image` [B,3,h,w] in order: colours [B,K,3], alpha
    [B,K,h,w]. Closed form of K successive lerps: each layer is seen through the ones above."""
    through = torch.flip(torch.cumprod(torch.flip(1.0 - alpha, (1,)), 1), (1,))  # prod_{j>=k}
    above = torch.cat([through[:, 1:], torch.ones_like(through[:, :1])], 1)  # prod_{j>k}
    layers = ((alpha * above).unsqueeze(2) * colours[..., None, None]).sum(1)
    return image * through[:, :1] + layers


def _boundary(region: Tensor, thickness: int) -> Tensor:
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


def _soften(image: Tensor) -> Tensor:
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


# --------------------------------------------------------------------------------------------
# Shapes: boolean inside-tests on broadcastable coordinate maps (no per-pixel Python).
# --------------------------------------------------------------------------------------------
def _ellipse(u: Tensor, v: Tensor, cu: Value, cv: Value, ru: Value, rv: Value) -> Tensor:
    """Points inside the axis-aligned ellipse centred (cu, cv) with radii (ru, rv)."""
    return ((u - cu) / ru).square() + ((v - cv) / rv).square() < 1.0


def _capsule(
    x: Tensor, y: Tensor, ax: Value, ay: Value, bx: Value, by: Value, radius: Value
) -> Tensor:
    """Points within `radius` of the segment a-b."""
    dx, dy = bx - ax, by - ay
    px, py = x - ax, y - ay
    t = ((px * dx + py * dy) / (dx * dx + dy * dy + 1e-6)).clamp(0.0, 1.0)
    return (px - t * dx).square() + (py - t * dy).square() < radius * radius


def _rounded_box(
    x: Tensor, y: Tensor, cx: Value, cy: Value, half_x: Value, half_y: Value, corner: Value
) -> Tensor:
    """Points inside the box centred (cx, cy) with half sizes and rounded corners."""
    qx = ((x - cx).abs() - (half_x - corner)).clamp(min=0.0)
    qy = ((y - cy).abs() - (half_y - corner)).clamp(min=0.0)
    return qx.square() + qy.square() < corner * corner


def _head_shape(
    u: Tensor, v: Tensor, rx: float, ry_up: float, ry_low: Tensor, jaw: float
) -> Tensor:
    """An egg: round skull (ry_up), a chin of height ry_low that narrows by `jaw` at the bottom."""
    ry = torch.where(v < 0, torch.full_like(v, ry_up), ry_low.expand_as(v))
    width = rx * (1.0 - jaw * (v / ry_low).clamp(0.0, 1.0).square())
    return (u / width).square() + (v / ry).square() < 1.0


class _Columns:
    """Hands out the columns of a uniform-draw matrix one parameter at a time, so the meaning of
    each column is fixed by the order of the code below (append new parameters at the end)."""

    def __init__(self, draws: Tensor, what: str) -> None:
        self.draws = draws
        self.what = what
        self.position = 0

    def next(self) -> Tensor:
        if self.position >= self.draws.shape[-1]:
            raise RuntimeError(f"ProceduralWorld: ran out of {self.what} draws; raise the count")
        column = self.draws[..., self.position]
        self.position += 1
        return column

    def between(self, low: float, high: float) -> Tensor:
        return low + (high - low) * self.next()

    def choice(self, probs: Tensor) -> Tensor:
        """Category index drawn with the (normalised) probabilities `probs`."""
        cumulative = torch.cumsum(probs / probs.sum(), 0)[:-1].to(self.draws.dtype)
        return torch.bucketize(self.next().contiguous(), cumulative, right=True)


@dataclass
class Scene:
    """Everything the embedded world knows about a batch of rendered pairs.

    Label maps use the face-parsing class ids; person slot 0 is the main (largest, front-most)
    person, -1 in `person_index` means background. Per-person tensors have `max_people` slots;
    `person_active` says which are used.
    """

    seeds: Tensor  # [B] int64, CPU
    labels: Tensor  # [B, H, W] int64: parse of the photo
    character: Tensor  # [B, 3, H, W] in [-1, 1]: the character rendering of the same scene
    character_labels: Tensor  # [B, H, W] int64: parse of the character rendering
    person_index: Tensor  # [B, H, W] int64: person slot drawn at each photo pixel, -1 = none
    character_person_index: Tensor  # [B, H, W] int64: the same for the character rendering
    background: Tensor  # [B, 3, H, W] in [-1, 1]: the photo's background without people
    num_people: Tensor  # [B] int64
    person_active: Tensor  # [B, P] bool
    skin_lab: Tensor  # [B, P, 3] base CIELAB skin tone (exact mean over the person's skin)
    person_ita: Tensor  # [B, P] ITA degrees of each person's skin (0 where inactive)
    skin_ita: Tensor  # [B] ITA of the main person (slot 0)
    face_fraction: Tensor  # [B, P] face width / frame height (framing: 0.6 close-up ... 0.08)
    head_box: Tensor  # [B, P, 4] approximate x0, y0, x1, y1 (px) of head and hair
    hair_color: Tensor  # [B, P] int64 index into HAIR_COLORS
    hair_style: Tensor  # [B, P] int64 index into HAIR_STYLES
    hair_lab: Tensor  # [B, P, 3] base CIELAB hair colour of each person in the photo
    character_skin_lab: Tensor  # [3] the character's fixed skin tone (exact mean of its skin)

    def to(self, device: torch.device | str) -> Scene:
        """A copy with every tensor except `seeds` on `device`."""
        moved = {
            f.name: getattr(self, f.name) if f.name == "seeds" else getattr(self, f.name).to(device)
            for f in fields(self)
        }
        return Scene(**moved)

    @property
    def batch_size(self) -> int:
        return int(self.seeds.shape[0])


class ProceduralWorld:
    """Seeded portrait renderer: `render(seeds) -> (photo [B,3,H,W] in [-1,1], Scene)`.

    Each pair draws its scene parameters from a CPU generator seeded with its own seed, so a pair
    never depends on the rest of the batch; rendering then runs batched on `device`.
    Colours are given as sRGB 0-255 triples.
    """

    def __init__(
        self,
        resolution: int | Sequence[int] = 128,
        max_people: int = 3,
        people_probs: Sequence[float] = (0.6, 0.25, 0.15),
        face_fraction_range: Sequence[float] = (0.08, 0.6),
        group_face_fraction_max: float = 0.32,
        closeup_prob: float = 0.3,
        closeup_face_fraction: float = 0.3,
        ita_range: Sequence[float] = (-60.0, 60.0),
        group_ita_spread: float = 20.0,
        hair_colors: Sequence[str] = tuple(HAIR_COLORS),
        hair_style_probs: Sequence[float] = (0.35, 0.3, 0.12, 0.15, 0.08),
        ears_prob: float = 0.6,
        max_tilt_deg: float = 18.0,
        camera_noise: Sequence[float] = (0.004, 0.025),
        character_skin_rgb: Sequence[float] = (244, 214, 196),
        character_hair_rgb: Sequence[float] = (44, 50, 98),
        character_eye_rgb: Sequence[float] = (60, 92, 170),
        character_outline_rgb: Sequence[float] = (34, 26, 40),
        character_head_scale: float = 1.07,
        character_chin_scale: float = 0.88,
        character_eye_scale: float = 1.0,
    ) -> None:
        if isinstance(resolution, int):
            height = width = int(resolution)
        else:
            height, width = (int(v) for v in resolution)
        if min(height, width) < 16:
            raise ValueError(
                f"ProceduralWorld: resolution must be at least 16 px, got {resolution}"
            )
        self.size = (height, width)
        if max_people < 1:
            raise ValueError(f"ProceduralWorld: max_people must be >= 1, got {max_people}")
        self.max_people = int(max_people)
        probs = torch.tensor([float(p) for p in people_probs], dtype=torch.float64)
        if probs.numel() != self.max_people or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(
                f"ProceduralWorld: people_probs needs {self.max_people} non-negative weights "
                f"(one per number of people 1..max_people), got {list(people_probs)}"
            )
        self.people_probs = probs
        self.face_fraction_range = self._pair(face_fraction_range, "face_fraction_range", 0.01, 1.0)
        self.group_face_fraction_max = float(group_face_fraction_max)
        if not 0.0 <= closeup_prob <= 1.0:
            raise ValueError(f"ProceduralWorld: closeup_prob must be in [0, 1], got {closeup_prob}")
        self.closeup_prob = float(closeup_prob)
        self.closeup_face_fraction = float(closeup_face_fraction)
        self.ita_range = self._pair(ita_range, "ita_range", -89.0, 89.0)
        self.group_ita_spread = float(group_ita_spread)
        unknown = [name for name in hair_colors if name not in HAIR_COLORS]
        if unknown or not hair_colors:
            raise ValueError(
                f"ProceduralWorld: hair_colors must be a non-empty subset of {list(HAIR_COLORS)}, "
                f"got {list(hair_colors)}"
            )
        self.hair_color_ids = torch.tensor([list(HAIR_COLORS).index(n) for n in hair_colors])
        style_probs = torch.tensor([float(p) for p in hair_style_probs], dtype=torch.float64)
        if style_probs.numel() != len(HAIR_STYLES) or (style_probs < 0).any():
            raise ValueError(
                f"ProceduralWorld: hair_style_probs needs {len(HAIR_STYLES)} weights for "
                f"{list(HAIR_STYLES)}, got {list(hair_style_probs)}"
            )
        self.hair_style_probs = style_probs
        self.ears_prob = float(ears_prob)
        self.max_tilt = math.radians(float(max_tilt_deg))
        self.camera_noise = self._pair(camera_noise, "camera_noise", 0.0, 0.5)
        self.character_skin_lab = _rgb255_to_lab(character_skin_rgb, "character_skin_rgb")
        self.character_hair_lab = _rgb255_to_lab(character_hair_rgb, "character_hair_rgb")
        self.character_eye_lab = _rgb255_to_lab(character_eye_rgb, "character_eye_rgb")
        self.character_outline_lab = _rgb255_to_lab(character_outline_rgb, "character_outline_rgb")
        self.character_head_scale = float(character_head_scale)
        self.character_chin_scale = float(character_chin_scale)
        self.character_eye_scale = float(character_eye_scale)

    @staticmethod
    def _pair(values: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
        pair = tuple(float(v) for v in values)
        if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
            raise ValueError(
                f"ProceduralWorld: {name} must be [min, max] within [{low}, {high}], got {values!r}"
            )
        return pair

    # ---------------------------------------------------------------------------- parameters
    def draw_parameters(self, seeds: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every random choice of the scenes, drawn on the CPU from each pair's own generator:
        scene-level parameters [B, ...] and per-person-slot parameters [B, P, ...]."""
        seeds = torch.as_tensor(seeds)
        if seeds.dim() != 1 or seeds.dtype.is_floating_point or seeds.dtype == torch.bool:
            raise ValueError(
                f"ProceduralWorld.render: seeds must be a 1-D int64 tensor, got {seeds.dtype} "
                f"{tuple(seeds.shape)}"
            )
        seeds = seeds.detach().to("cpu", torch.int64)
        batch, slots = seeds.shape[0], self.max_people
        scene_draws = torch.empty(batch, _SCENE_DRAWS, dtype=torch.float64)
        person_draws = torch.empty(batch, slots, _PERSON_DRAWS, dtype=torch.float64)
        keys = torch.empty(batch, dtype=torch.int64)
        for row, seed in enumerate(seeds.tolist()):
            generator = generator_for(seed)
            scene_draws[row] = torch.rand(_SCENE_DRAWS, generator=generator, dtype=torch.float64)
            person_draws[row] = torch.rand(
                slots, _PERSON_DRAWS, generator=generator, dtype=torch.float64
            )
            keys[row] = torch.randint(0, 2**31 - 1, (1,), generator=generator)[0]

        height, width = self.size
        frame_width = width / height  # frame units: the height is 1
        c = _Columns(scene_draws, "scene")
        p: dict[str, Tensor] = {"seeds": seeds, "noise_key": keys}
        num_people = 1 + c.choice(self.people_probs)
        p["num_people"] = num_people
        low_f, high_f = self.face_fraction_range
        high_f = torch.where(
            num_people > 1,
            torch.tensor(
                min(high_f, max(low_f, self.group_face_fraction_max)), dtype=torch.float64
            ),
            torch.tensor(high_f, dtype=torch.float64),
        )
        main_face = torch.exp(math.log(low_f) + c.next() * (torch.log(high_f) - math.log(low_f)))
        # Head-and-shoulders portraits (single people) get an extra share of the draws.
        top_f = self.face_fraction_range[1]
        closeup_low = min(max(self.closeup_face_fraction, low_f), top_f)
        closeup_face = closeup_low + c.next() * (top_f - closeup_low)
        closeup = (c.next() < self.closeup_prob) & (num_people == 1)
        main_face = torch.where(closeup, closeup_face, main_face)
        main_ita = c.between(*self.ita_range)
        light_x = c.between(-0.75, 0.75)
        light_y = c.between(-0.65, 0.2)  # mostly from above (y points down)
        p["light"] = torch.stack(
            [light_x, light_y, torch.sqrt((1.0 - light_x**2 - light_y**2).clamp(min=0.05))], -1
        )
        p["shade_strength"] = c.between(0.6, 1.0)
        p["noise_sigma"] = c.between(*self.camera_noise)
        slot_shift = torch.floor(c.next() * num_people)
        self._draw_background(c, p)

        q = _Columns(person_draws, "person")
        scene, p = p, {}
        slot = torch.arange(slots, dtype=torch.float64).view(1, -1)
        n = num_people.view(-1, 1).to(torch.float64)
        active = slot < n
        p["active"] = active
        relative = torch.where(slot == 0, 1.0, q.between(0.62, 0.95))
        radius = (main_face.view(-1, 1) / 2.0) * relative  # r: half the face width
        position = torch.remainder(slot + slot_shift.view(-1, 1), n)
        jitter = torch.where(n == 1, 0.4 * frame_width, 0.3 * frame_width / n)
        head_x = (position + 0.5) / n * frame_width + (q.next() - 0.5) * jitter
        head_x = torch.minimum(torch.maximum(head_x, 0.6 * radius), frame_width - 0.6 * radius)
        top = radius * q.between(1.05, 1.45) + 0.01
        lowest = torch.minimum(torch.maximum(1.0 - _FIGURE_BOTTOM * radius, top), top + 0.35)
        p["radius"], p["head_x"] = radius, head_x
        p["head_y"] = top + q.next() * (lowest - top)
        p["tilt"] = q.between(-1.0, 1.0) * self.max_tilt
        p["yaw"] = q.between(-0.3, 0.3)
        low_ita, high_ita = self.ita_range
        spread = q.between(-1.0, 1.0) * self.group_ita_spread
        ita = torch.where(
            slot == 0,
            main_ita.view(-1, 1),
            (main_ita.view(-1, 1) + spread).clamp(low_ita, high_ita),
        )
        p["ita"] = ita
        skin = skin_lab_from_ita(ita, b_jitter=q.between(-1.5, 1.5))
        skin[..., 1] = q.between(8.0, 14.0)
        p["skin_lab"] = skin
        hair_pick = torch.floor(q.next() * len(self.hair_color_ids)).long()
        p["hair_color"] = self.hair_color_ids[hair_pick.clamp(max=len(self.hair_color_ids) - 1)]
        hair_table = torch.tensor(list(HAIR_COLORS.values()), dtype=torch.float64)
        p["hair_lab"] = hair_table[p["hair_color"]] + torch.stack(
            [q.between(-4, 4), q.between(-2, 2), q.between(-3, 3)], -1
        )
        style = q.choice(self.hair_style_probs)
        p["hair_style"] = style
        # Hairline: height at the forehead centre (fringe) and at the temples, in head units.
        fringe_range = torch.tensor([[-0.75, -0.45], [-0.7, -0.38], [-0.65, -0.5], [-0.6, -0.4],
                                     [-0.75, -0.65]], dtype=torch.float64)  # fmt: skip
        temple_range = torch.tensor([[-0.2, 0.15], [0.0, 0.1], [-0.15, 0.0], [-0.2, -0.05],
                                     [-0.4, -0.3]], dtype=torch.float64)  # fmt: skip
        u_fringe, u_temple = q.next(), q.next()
        p["hairline_mid"] = fringe_range[style, 0] + u_fringe * (
            fringe_range[style, 1] - fringe_range[style, 0]
        )
        p["hairline_side"] = temple_range[style, 0] + u_temple * (
            temple_range[style, 1] - temple_range[style, 0]
        )
        p["hair_part"] = q.between(-0.3, 0.3)
        p["hair_length"] = q.between(0.8, 1.2)
        ear_prob = torch.where(style == HAIR_STYLES.index("long"), 0.4, 1.0) * self.ears_prob
        p["ears"] = q.next() < ear_prob
        p["eye_spacing"] = q.between(0.36, 0.44)
        p["eye_size"] = q.between(0.85, 1.1)
        p["iris_lab"] = torch.tensor(_IRIS_LAB, dtype=torch.float64)[
            torch.floor(q.next() * len(_IRIS_LAB)).long().clamp(max=len(_IRIS_LAB) - 1)
        ]
        p["gaze_x"] = q.between(-1.0, 1.0)
        p["gaze_y"] = q.between(-1.0, 1.0)
        p["brow_thickness"] = q.between(0.04, 0.075)
        p["brow_raise"] = q.between(-0.04, 0.04)
        p["nose_size"] = q.between(0.85, 1.15)
        p["mouth_width"] = q.between(0.85, 1.15)
        p["mouth_open"] = q.next().square()
        p["lip_redness"] = q.between(8.0, 18.0)
        p["chin"] = q.between(0.95, 1.08)
        p["top_lab"] = torch.stack([q.between(15, 85), q.between(-35, 35), q.between(-35, 35)], -1)
        p["stripes"] = q.next() < 0.35
        p["stripe_freq"] = q.between(2.0, 5.0)
        p["stripe_angle"] = q.between(-0.6, 0.6)
        p["long_sleeves"] = q.next() < 0.5
        p["pants_lab"] = torch.stack([q.between(15, 60), q.between(-8, 8), q.between(-28, 8)], -1)
        p["shoe_lab"] = torch.stack([q.between(10, 40), q.between(-4, 8), q.between(-4, 12)], -1)
        for side in ("left", "right"):
            raised = q.next() < 0.15
            p[f"arm_{side}"] = torch.where(raised, q.between(1.3, 2.6), q.between(0.08, 0.5))
            p[f"elbow_{side}"] = q.between(-0.2, 1.2)
        p["leg_spread"] = q.between(0.03, 0.16)
        return scene, p

    def _draw_background(self, c: _Columns, p: dict[str, Tensor]) -> None:
        # Six families (gradient, sky+ground, stripes, blobs, bokeh, interior), all in CIELAB.
        p["bg_type"] = torch.floor(c.next() * 6).long().clamp(max=5)
        for name in ("bg_color_a", "bg_color_b", "bg_color_c"):
            p[name] = torch.stack([c.between(28, 92), c.between(-25, 25), c.between(-25, 35)], -1)
        p["bg_angle"] = c.between(0.0, 2.0 * math.pi)
        p["bg_offset"] = c.between(-0.3, 0.3)
        p["sky_lab"] = torch.stack([c.between(62, 88), c.between(-8, 4), c.between(-38, -8)], -1)
        p["ground_lab"] = torch.stack([c.between(30, 66), c.between(-22, 10), c.between(4, 36)], -1)
        p["horizon"] = c.between(0.45, 0.8)
        p["bg_freq"] = c.between(3.0, 14.0)
        p["bg_texture"] = c.between(1.5, 7.0)
        p["bokeh_extra"] = c.next() < 0.2
        p["floor"] = c.between(0.62, 0.88)
        p["window_x"] = c.between(0.05, 0.6)
        p["window_y"] = c.between(0.08, 0.3)
        p["window_w"] = c.between(0.15, 0.4)
        p["window_h"] = c.between(0.15, 0.35)

    # ---------------------------------------------------------------------------- rendering
    @torch.no_grad()
    def render(
        self, seeds: Tensor, device: torch.device | str | None = None
    ) -> tuple[Tensor, Scene]:
        """Photos [B, 3, H, W] in [-1, 1] and their `Scene` (labels, character, ...)."""
        scene_params, people_params = self.draw_parameters(seeds)
        batch = int(scene_params["seeds"].shape[0])
        if batch == 0:
            raise ValueError("ProceduralWorld.render: got no seeds (an empty batch)")
        device = torch.device(device) if device is not None else torch.device("cpu")
        height, width = self.size

        def moved(params: dict[str, Tensor]) -> dict[str, Tensor]:
            return {
                k: v.to(device, torch.float32) if v.dtype == torch.float64 else v.to(device)
                for k, v in params.items()
                if k != "seeds"
            }

        dev, people = moved(scene_params), moved(people_params)
        persons = self._flatten_people(dev, people)
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / height
        grid_y, grid_x = ys.view(1, -1, 1), xs.view(1, 1, -1)

        background_lab = self._background(dev, batch, device)
        body = self._paint_body(persons, grid_x, grid_y)
        photo_materials = self._paint_head(persons, body, grid_x, grid_y, character=False)
        character_materials = self._paint_head(persons, body, grid_x, grid_y, character=True)
        photo_mat, photo_person = self._composite(photo_materials, persons, batch)
        char_mat, char_person = self._composite(character_materials, persons, batch)
        slot_of = torch.cat([persons["slot"], persons["slot"].new_full((1,), -1)])
        photo_slot = slot_of[photo_person]  # person -1 (background) picks the appended -1
        char_slot = slot_of[char_person]

        label_table = _MATERIAL_LABEL.to(device)
        photo_labels = label_table[photo_mat.long()]
        photo_lab = self._shade_photo(
            photo_mat, photo_person, persons, dev, background_lab, grid_x, grid_y
        )
        photo_lab = self._correct_skin(
            _soften(photo_lab), photo_mat, photo_labels, photo_slot, people["skin_lab"]
        )
        photo = self._to_rgb(photo_lab, dev)

        char_lab, char_labels = self._shade_character(
            char_mat, char_person, persons, background_lab, grid_x, grid_y
        )
        char_skin = torch.tensor(self.character_skin_lab, device=device)
        char_lab = self._correct_skin(
            char_lab, char_mat, char_labels, char_slot,
            char_skin.expand_as(people["skin_lab"]),
        )  # fmt: skip
        character = lab_to_rgb(char_lab).clamp(0.0, 1.0) * 2.0 - 1.0

        active = people["active"]
        radius = people["radius"] * active
        box = torch.stack(
            [
                people["head_x"] - 1.35 * radius,
                people["head_y"] - 1.9 * radius,
                people["head_x"] + 1.35 * radius,
                people["head_y"] + 1.4 * radius,
            ],
            -1,
        )
        ita = people["ita"] * active
        scene = Scene(
            seeds=scene_params["seeds"],
            labels=photo_labels,
            character=character,
            character_labels=char_labels,
            person_index=photo_slot,
            character_person_index=char_slot,
            background=lab_to_rgb(background_lab).clamp(0.0, 1.0) * 2.0 - 1.0,
            num_people=dev["num_people"],
            person_active=active,
            skin_lab=people["skin_lab"] * active.unsqueeze(-1),
            person_ita=ita,
            skin_ita=ita[:, 0],
            face_fraction=2.0 * radius,
            head_box=box * height * active.unsqueeze(-1),
            hair_color=people["hair_color"],
            hair_style=people["hair_style"],
            hair_lab=people["hair_lab"] * active.unsqueeze(-1),
            character_skin_lab=char_skin,
        )
        return photo, scene

    def _flatten_people(self, dev: dict[str, Tensor], people: dict[str, Tensor]):
        """Active persons as one flat list [N, ...]: geometry is computed only for people
        that exist. `owner` is each one's pair, `slot` its slot (0 = main, drawn last)."""
        active = people["active"]
        batch = active.shape[0]
        flat = {k: v[active] for k, v in people.items() if k != "active"}
        flat["slot"] = torch.arange(self.max_people, device=active.device).expand(batch, -1)[active]
        owner = torch.arange(batch, device=active.device).view(-1, 1).expand_as(active)[active]
        flat["owner"] = owner
        flat["scene_light"] = dev["light"]  # [B, 3], per photo
        flat["inv_radius"] = 1.0 / flat["radius"]
        flat["cos_tilt"], flat["sin_tilt"] = torch.cos(flat["tilt"]), torch.sin(flat["tilt"])
        return flat

    # -- geometry ---------------------------------------------------------------------------
    @staticmethod
    def _local(persons: dict[str, Tensor], grid_x: Tensor, grid_y: Tensor):
        """Body coordinates (upright, in r units, [N,1,W] and [N,H,1]) and head coordinates
        (rotated by the head tilt, [N,H,W])."""
        r = persons["radius"].view(-1, 1, 1)
        bx = (grid_x - persons["head_x"].view(-1, 1, 1)) / r
        by = (grid_y - persons["head_y"].view(-1, 1, 1)) / r
        cos_t = torch.cos(persons["tilt"]).view(-1, 1, 1)
        sin_t = torch.sin(persons["tilt"]).view(-1, 1, 1)
        u = cos_t * bx + sin_t * by
        v = cos_t * by - sin_t * bx
        return bx, by, u, v

    def _paint_body(self, persons: dict[str, Tensor], grid_x: Tensor, grid_y: Tensor) -> Tensor:
        """Back hair, neck, legs, torso and arms, shared by photo and character: [N, H, W] uint8."""
        bx, by, u, v = self._local(persons, grid_x, grid_y)
        count = persons["radius"].shape[0]
        canvas = torch.zeros(count, grid_y.shape[1], grid_x.shape[2], dtype=torch.uint8,
                             device=grid_x.device)  # fmt: skip
        style = persons["hair_style"].view(-1, 1, 1)
        length = persons["hair_length"].view(-1, 1, 1)
        long_back = _rounded_box(u, v, 0.0, 0.85 * length, 1.3, 2.15 * length, 0.9)
        angle = torch.atan2(u, v + 0.25)
        curls = (u.square() + (v + 0.25).square()).sqrt() < 1.55 * (1 + 0.06 * torch.sin(9 * angle))
        back = (long_back & (style == HAIR_STYLES.index("long"))) | (
            curls & (style == HAIR_STYLES.index("curly"))
        )
        canvas.masked_fill_(back, _M["hair_back"])
        canvas.masked_fill_(_capsule(bx, by, 0.0, 0.5, 0.0, 2.2, 0.5), _M["neck"])
        spread = persons["leg_spread"].view(-1, 1, 1)
        for sign in (-1.0, 1.0):
            hip_x, hip_y = sign * _HIP[0], _HIP[1]
            foot_x = hip_x + sign * _LEG * torch.sin(spread)
            foot_y = hip_y + _LEG * torch.cos(spread)
            canvas.masked_fill_(_capsule(bx, by, hip_x, hip_y, foot_x, foot_y, 0.72), _M["pants"])
            canvas.masked_fill_(
                _ellipse(bx, by, foot_x + sign * 0.25, foot_y + 0.25, 0.6, 0.32), _M["shoe"]
            )
        canvas.masked_fill_(_rounded_box(bx, by, 0.0, 4.45, 2.0, 2.85, 1.0), _M["top"])
        long_sleeves = persons["long_sleeves"].view(-1, 1, 1)
        for side, sign in (("left", -1.0), ("right", 1.0)):
            upper = persons[f"arm_{side}"].view(-1, 1, 1)
            lower = upper - persons[f"elbow_{side}"].view(-1, 1, 1)
            sx, sy = sign * _SHOULDER[0], _SHOULDER[1]
            ex = sx + sign * _UPPER_ARM * torch.sin(upper)
            ey = sy + _UPPER_ARM * torch.cos(upper)
            wx = ex + sign * _FOREARM * torch.sin(lower)
            wy = ey + _FOREARM * torch.cos(lower)
            canvas.masked_fill_(_capsule(bx, by, sx, sy, ex, ey, 0.5), _M["sleeve"])
            forearm = _capsule(bx, by, ex, ey, wx, wy, 0.4)
            canvas.masked_fill_(forearm & long_sleeves, _M["sleeve"])
            canvas.masked_fill_(forearm & ~long_sleeves, _M["limb_skin"])
            hand_x = wx + sign * 0.3 * torch.sin(lower)
            hand_y = wy + 0.3 * torch.cos(lower)
            canvas.masked_fill_(_ellipse(bx, by, hand_x, hand_y, 0.42, 0.42), _M["limb_skin"])
        return canvas

    def _paint_head(
        self,
        persons: dict[str, Tensor],
        body: Tensor,
        grid_x: Tensor,
        grid_y: Tensor,
        *,
        character: bool,
    ) -> Tensor:
        """Ears, face, face parts and front hair over the body canvas. [N, H, W] uint8.

        The character keeps the geometry (position, tilt, yaw, gaze, hair style) with its own
        proportions: a larger, rounder skull, a smaller chin, big eyes, small nose and mouth."""
        _, _, u, v = self._local(persons, grid_x, grid_y)
        canvas = body.clone()
        view = {k: t.view(-1, 1, 1) for k, t in persons.items() if t.dim() == 1}
        head = self.character_head_scale if character else 1.0
        for name, sign in (("ear_l", -1.0), ("ear_r", 1.0)):
            ear = _ellipse(u, v, sign * 0.97 * head - 0.3 * view["yaw"], 0.1, 0.2, 0.32)
            canvas.masked_fill_(ear & view["ears"], _M[name])
        chin = 1.22 * view["chin"] * (self.character_chin_scale if character else 1.0)
        face = _head_shape(u, v, head, 1.28 * head, chin, 0.35 if character else 0.25)
        canvas.masked_fill_(face, _M["face"])
        # Face parts lie inside the face: test them on the face pixels only (a compact list),
        # which costs a fraction of testing every pixel of the frame for every person.
        flat = face.view(-1).nonzero().squeeze(1)
        owner = torch.div(flat, face[0].numel(), rounding_mode="floor")
        at = {k: t[owner] for k, t in persons.items() if t.dim() == 1}
        at["chin"] = chin.view(-1)[owner]
        parts = torch.full_like(flat, _M["face"], dtype=torch.uint8)
        face_u, face_v = u.view(-1)[flat], v.view(-1)[flat]
        if character:
            self._paint_character_face(parts, face_u, face_v, at)
        else:
            self._paint_photo_face(parts, face_u, face_v, at)
        canvas.view(-1)[flat] = parts
        self._paint_front_hair(canvas, u, v, view, head)
        return canvas

    @staticmethod
    def _paint_photo_face(parts: Tensor, u: Tensor, v: Tensor, at: dict[str, Tensor]) -> None:
        """Nose, brows, eyes (sclera, iris, pupil), lips and mouth of a photo face. `parts` and
        the coordinates are one entry per face pixel; `at` holds the owner's parameters."""
        yaw = at["yaw"]
        nose = _ellipse(u, v, 1.2 * yaw, 0.33, 0.12 * at["nose_size"], 0.22 * at["nose_size"])
        parts.masked_fill_(nose, _M["nose"])
        size = at["eye_size"]
        for suffix, sign in (("l", -1.0), ("r", 1.0)):
            eye_x = sign * at["eye_spacing"] + yaw
            brow_u = u - eye_x
            brow = _ellipse(brow_u, v + 0.8 * brow_u.square(), 0.0, -0.25 + at["brow_raise"],
                            0.25, at["brow_thickness"])  # fmt: skip
            parts.masked_fill_(brow, _M[f"brow_{suffix}"])
            eye = _ellipse(u, v, eye_x, 0.05, 0.2 * size, 0.085 * size)
            parts.masked_fill_(eye, _M[f"sclera_{suffix}"])
            iris_x = eye_x + 0.08 * size * at["gaze_x"]
            iris_y = 0.05 + 0.02 * size * at["gaze_y"]
            iris = _ellipse(u, v, iris_x, iris_y, 0.085 * size, 0.085 * size) & eye
            parts.masked_fill_(iris, _M[f"iris_{suffix}"])
            pupil = _ellipse(u, v, iris_x, iris_y, 0.035 * size, 0.035 * size) & eye
            parts.masked_fill_(pupil, _M[f"pupil_{suffix}"])
        width = at["mouth_width"]
        parts.masked_fill_(_ellipse(u, v, yaw, 0.66, 0.3 * width, 0.07), _M["lip_upper"])
        parts.masked_fill_(_ellipse(u, v, yaw, 0.76, 0.27 * width, 0.09), _M["lip_lower"])
        gap = _ellipse(u, v, yaw, 0.715, 0.25 * width, 0.025 + 0.05 * at["mouth_open"])
        parts.masked_fill_(gap, _M["mouth"])

    def _paint_character_face(
        self, parts: Tensor, u: Tensor, v: Tensor, at: dict[str, Tensor]
    ) -> None:
        """The character's face: big eyes with highlights, blush, tiny nose, small mouth."""
        yaw = at["yaw"]
        size = self.character_eye_scale
        spacing = at["eye_spacing"] + 0.02
        parts.masked_fill_(_ellipse(u, v, 1.2 * yaw, 0.4, 0.05, 0.05), _M["nose"])
        for suffix, sign in (("l", -1.0), ("r", 1.0)):
            eye_x = sign * spacing + yaw
            blush = _ellipse(u, v, eye_x + sign * 0.04, 0.42, 0.15, 0.06)
            parts.masked_fill_(blush, _M["blush"])
            brow_u = u - eye_x
            brow = _ellipse(brow_u, v + 1.0 * brow_u.square(), 0.0, -0.2 + at["brow_raise"],
                            0.22, 0.035)  # fmt: skip
            parts.masked_fill_(brow, _M[f"brow_{suffix}"])
            eye = _ellipse(u, v, eye_x, 0.13, 0.25 * size, 0.21 * size)
            parts.masked_fill_(eye, _M[f"sclera_{suffix}"])
            iris_x = eye_x + 0.07 * size * at["gaze_x"]
            iris_y = 0.14 + 0.02 * size * at["gaze_y"]
            iris = _ellipse(u, v, iris_x, iris_y, 0.15 * size, 0.19 * size) & eye
            parts.masked_fill_(iris, _M[f"iris_{suffix}"])
            pupil = _ellipse(u, v, iris_x, iris_y + 0.02, 0.07 * size, 0.1 * size) & eye
            parts.masked_fill_(pupil, _M[f"pupil_{suffix}"])
            shine = _ellipse(u, v, iris_x - 0.06 * size, iris_y - 0.08 * size, 0.05 * size,
                             0.05 * size) & eye  # fmt: skip
            parts.masked_fill_(shine, _M[f"shine_{suffix}"])
        # The mouth moves up with the shorter chin.
        mouth_y = 0.5 * at["chin"] / 1.22 + 0.08
        width = 0.55 * at["mouth_width"]
        parts.masked_fill_(_ellipse(u, v, yaw, mouth_y, 0.3 * width, 0.035), _M["lip_upper"])
        lower = _ellipse(u, v, yaw, mouth_y + 0.045, 0.27 * width, 0.045)
        parts.masked_fill_(lower, _M["lip_lower"])
        gap = _ellipse(u, v, yaw, mouth_y + 0.025, 0.24 * width, 0.012 + 0.05 * at["mouth_open"])
        parts.masked_fill_(gap, _M["mouth"])

    @staticmethod
    def _paint_front_hair(
        canvas: Tensor, u: Tensor, v: Tensor, view: dict[str, Tensor], head: float
    ) -> None:
        """The hair over the skull down to a hairline (fringe in the middle, temples at the
        sides), face-framing locks for long hair, a bun on top for `bun`."""
        style = view["hair_style"]
        mid, side = view["hairline_mid"], view["hairline_side"]
        # Flat across the forehead, dropping to the temple height beyond the brows.
        across = (((u - 0.3 * view["hair_part"]).abs() / head - 0.55) / 0.4).clamp(0.0, 1.0)
        hairline = mid + (side - mid) * across.square()
        buzz = style == HAIR_STYLES.index("buzz")
        cap_x = torch.where(buzz, 1.03, 1.12) * head
        cap_y = torch.where(buzz, 1.31, 1.4) * head
        cap = _ellipse(u, v, 0.0, -0.08 * head, cap_x, cap_y) & (v < hairline)
        locks = (
            _ellipse(u, v, 0.0, 0.3, 1.22 * head, 1.75 * head)
            & ((u - 0.3 * view["yaw"]).abs() > 0.8 * head)
            & (v < 1.2)
            & (style == HAIR_STYLES.index("long"))
        )
        bun = _ellipse(u, v, 0.0, -1.45 * head, 0.45, 0.42) & (style == HAIR_STYLES.index("bun"))
        canvas.masked_fill_(cap | locks | bun, _M["hair"])

    def _composite(
        self, materials: Tensor, persons: dict[str, Tensor], batch: int
    ) -> tuple[Tensor, Tensor]:
        """People over each other, farthest (highest slot) first: material [B,H,W] uint8 and
        the flat person index drawn at each pixel (-1 = background)."""
        height, width = materials.shape[-2:]
        device = materials.device
        out_mat = torch.zeros(batch, height, width, dtype=torch.uint8, device=device)
        out_person = torch.full((batch, height, width), -1, dtype=torch.int64, device=device)
        owner, slot = persons["owner"], persons["slot"]
        flat_index = torch.arange(owner.shape[0], device=device)
        for depth in range(self.max_people - 1, -1, -1):
            chosen = slot == depth
            if not bool(chosen.any()):
                continue
            rows = owner[chosen]
            drawn = materials[chosen] != 0
            out_mat[rows] = torch.where(drawn, materials[chosen], out_mat[rows])
            person = flat_index[chosen].view(-1, 1, 1).expand_as(drawn)
            out_person[rows] = torch.where(drawn, person, out_person[rows])
        return out_mat, out_person

    # -- shading ----------------------------------------------------------------------------
    @staticmethod
    def _pixel_params(
        person_map: Tensor, persons: dict[str, Tensor], names: Sequence[str]
    ) -> list[Tensor]:
        """Per-pixel copies (float32 [B, H, W]) of per-person parameters: those of the person
        drawn at each pixel. One gather for all of them."""
        table = torch.stack([persons[name].to(torch.float32) for name in names], -1)
        return list(table[person_map.clamp(min=0)].unbind(-1))

    def _head_light(
        self, person_map: Tensor, persons: dict[str, Tensor], grid_x: Tensor, grid_y: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Lambert terms of every pixel on its person's head ellipsoid and body cylinder, and
        the head coordinates (u, v) there."""
        hx, hy, inv_r, cos_t, sin_t = self._pixel_params(
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

    @staticmethod
    def _lookup(table: Tensor, materials: Tensor) -> Tensor:
        return table.to(materials.device)[materials.long()]

    @staticmethod
    def _material_groups(materials: Tensor) -> dict[str, Tensor]:
        """Boolean [B, H, W] masks of the material groups, from one table lookup."""
        bits = ProceduralWorld._lookup(_GROUP_BITS, materials)
        return {name: (bits & (1 << i)) != 0 for i, name in enumerate(_GROUPS)}

    def _palette(self, persons: dict[str, Tensor], character: bool) -> Tensor:
        """Base CIELAB colour of every (person, material): [N + 1, M, 3] (last row: unused)."""
        count = persons["radius"].shape[0]
        device = persons["radius"].device
        palette = torch.zeros(count + 1, _NUM_MATERIALS, 3, device=device)
        if character:
            skin = torch.tensor(self.character_skin_lab, device=device).expand(count, 3)
            hair = torch.tensor(self.character_hair_lab, device=device).expand(count, 3)
            iris = torch.tensor(self.character_eye_lab, device=device).expand(count, 3)
        else:
            skin, hair, iris = persons["skin_lab"], persons["hair_lab"], persons["iris_lab"]

        def shifted(base: Tensor, dl: float = 0.0, da: float | Tensor = 0.0, db: float = 0.0):
            delta = torch.zeros_like(base)
            delta[:, 0], delta[:, 1], delta[:, 2] = dl, da, db
            return base + delta

        def flat(lab: Sequence[float]) -> Tensor:
            return torch.tensor(lab, device=device).expand(count, 3)

        rows = palette[:count]
        rows[:, _M["face"]] = skin
        rows[:, _M["nose"]] = shifted(skin, -2.0 if not character else -7.0)
        rows[:, _M["ear_l"]] = rows[:, _M["ear_r"]] = shifted(skin, -3.0)
        rows[:, _M["neck"]] = shifted(skin, -7.0 if not character else -12.0)
        rows[:, _M["limb_skin"]] = skin
        rows[:, _M["blush"]] = shifted(skin, -9.0, 14.0, 2.0)
        brow = hair.clone()
        brow[:, 0] = torch.minimum(hair[:, 0] * 0.8, skin[:, 0] - 14.0).clamp(min=6.0)
        rows[:, _M["brow_l"]] = rows[:, _M["brow_r"]] = brow
        rows[:, _M["sclera_l"]] = rows[:, _M["sclera_r"]] = flat((97.0, 0.0, 0.0) if character
                                                                else (86.0, 0.0, 4.0))  # fmt: skip
        rows[:, _M["iris_l"]] = rows[:, _M["iris_r"]] = iris
        pupil = flat((10.0, 2.0, -4.0)) if not character else shifted(iris * 0.35)
        rows[:, _M["pupil_l"]] = rows[:, _M["pupil_r"]] = pupil
        rows[:, _M["shine_l"]] = rows[:, _M["shine_r"]] = flat((100.0, 0.0, 0.0))
        if character:
            lips = shifted(skin, -18.0, 26.0, 6.0)
        else:
            lips = skin.clone()
            lips[:, 0] = skin[:, 0] * 0.85 - 2.0
            lips[:, 1] = skin[:, 1] + persons["lip_redness"]
            lips[:, 2] = skin[:, 2] + 2.0
        rows[:, _M["lip_upper"]] = shifted(lips, -3.0)
        rows[:, _M["lip_lower"]] = lips
        rows[:, _M["mouth"]] = flat((30.0, 34.0, 14.0) if character else (20.0, 20.0, 10.0))
        rows[:, _M["hair"]] = hair
        rows[:, _M["hair_back"]] = shifted(hair, -5.0)
        rows[:, _M["top"]] = rows[:, _M["sleeve"]] = persons["top_lab"]
        rows[:, _M["pants"]] = persons["pants_lab"]
        rows[:, _M["shoe"]] = persons["shoe_lab"]
        return palette

    @staticmethod
    def _base_colour(
        palette: Tensor, materials: Tensor, person_map: Tensor, background: Tensor
    ) -> Tensor:
        """Palette colour at every pixel, the background where no person is drawn: [B,3,H,W]."""
        index = person_map.clamp(min=0) * _NUM_MATERIALS + materials.long()
        colour = palette.view(-1, 3)[index].permute(0, 3, 1, 2)
        return torch.where((materials == 0).unsqueeze(1), background, colour)

    def _shade_photo(
        self,
        materials: Tensor,
        person_map: Tensor,
        persons: dict[str, Tensor],
        dev: dict[str, Tensor],
        background: Tensor,
        grid_x: Tensor,
        grid_y: Tensor,
    ) -> Tensor:
        """Soft Lambert shading, skin/hair/cloth texture: the photo in CIELAB [B,3,H,W]."""
        base = self._base_colour(self._palette(persons, False), materials, person_map, background)
        head, body, u, v = self._head_light(person_map, persons, grid_x, grid_y)
        groups = self._material_groups(materials)
        lambert = torch.where(groups["head"], head, body)
        strength = dev["shade_strength"].view(-1, 1, 1)
        keys = dev["noise_key"]
        size = materials.shape[-2:]
        fine = _value_noise(keys, 1, max(4, size[0] // 3), size)[:, 0]
        coarse = _value_noise(keys, 2, 6, size)[:, 0]
        is_hair, is_cloth, on_top = groups["hair"], groups["cloth"], groups["top"]
        is_skin = groups["skin"]
        (radius, head_x, part, style, stripes, freq, angle) = self._pixel_params(
            person_map, persons,
            ("radius", "head_x", "hair_part", "hair_style", "stripes", "stripe_freq",
             "stripe_angle"),
        )  # fmt: skip
        # Shading in L*, centred near the mean of the lit ellipsoid; the exact skin mean is
        # restored afterwards by _correct_skin, so the drawn tone is what is measured.
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
        texture = torch.where(
            is_hair, hair_texture, torch.where(is_cloth, cloth_texture, 1.2 * fine)
        )
        texture = torch.where(materials == 0, torch.zeros_like(texture), texture)
        lab = base.clone()
        lab[:, 0] = (base[:, 0] + light_l + texture).clamp(0.0, 100.0)
        # Subject skin gets a hint of warm light on lit parts (a and b scale with lightness).
        return lab

    def _shade_character(
        self,
        materials: Tensor,
        person_map: Tensor,
        persons: dict[str, Tensor],
        background: Tensor,
        grid_x: Tensor,
        grid_y: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Flat cel shading (2-3 tones), anime hair shine and dark outlines: CIELAB [B,3,H,W]
        and the character's labels."""
        posterised = F.interpolate(
            F.avg_pool2d(background, 4, ceil_mode=True), size=background.shape[-2:],
            mode="bilinear", align_corners=False,
        )  # fmt: skip
        steps = torch.tensor([10.0, 8.0, 8.0], device=background.device).view(1, 3, 1, 1)
        posterised = torch.round(posterised / steps) * steps
        base = self._base_colour(self._palette(persons, True), materials, person_map, posterised)
        head, body, u, v = self._head_light(person_map, persons, grid_x, grid_y)
        groups = self._material_groups(materials)
        lambert = torch.where(groups["head"], head, body)
        is_hair = groups["hair"]
        is_tone = groups["skin"] | is_hair | groups["cloth"]
        shadow = torch.where(is_tone & (lambert < 0.35), -11.0, 0.0)
        ring = (u / 1.15).square() + ((v + 0.1) / 1.45).square()
        shine = is_hair & (materials == _M["hair"]) & ((ring - 0.62).abs() < 0.06) & (v < -0.2)
        tone = shadow + torch.where(shine, 16.0, 0.0)
        lab = base.clone()
        lab[:, 0] = (base[:, 0] + tone).clamp(0.0, 100.0)
        labels = self._lookup(_MATERIAL_LABEL, materials)
        # Outlines: every boundary between parts or people, drawn on the non-skin side so the
        # character's skin keeps its flat fill (colour reflection measures its mean).
        region = torch.where(labels == 10, 1, labels) + 32 * (person_map + 1)
        thickness = max(1, round(min(materials.shape[-2:]) / 160))
        boundary = _boundary(region.float(), thickness)
        skin_side = (labels == 1) | (labels == 10)
        outline = boundary & ~skin_side
        ink = torch.tensor(self.character_outline_lab, device=lab.device).view(1, 3, 1, 1)
        lab = torch.where(outline.unsqueeze(1), ink, lab)
        return lab, labels

    @staticmethod
    def _correct_skin(
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
        mean = (skin.unsqueeze(2) * lab.unsqueeze(1)).sum((-1, -2)) / count.clamp(
            min=1.0
        ).unsqueeze(-1)
        shift = torch.where(count.unsqueeze(-1) > 0, target - mean, torch.zeros_like(mean))
        toned = ProceduralWorld._material_groups(materials)["skin"]
        weights = (owned & toned.unsqueeze(1)).to(lab.dtype)  # [B, P, H, W]
        return lab + (weights.unsqueeze(2) * shift.view(*shift.shape, 1, 1)).sum(1)

    def _to_rgb(self, lab: Tensor, dev: dict[str, Tensor]) -> Tensor:
        """CIELAB -> sRGB, plus camera noise (hashed per pixel), in [-1, 1]."""
        rgb = lab_to_rgb(lab, clip=False)
        batch, _, height, width = rgb.shape
        counter = torch.arange(3 * height * width, device=rgb.device).view(1, 3, height, width)
        keys = dev["noise_key"].view(-1, 1, 1, 1)
        # Sum of two uniforms: a cheap bell-shaped noise with unit variance after scaling.
        bits = _hash_bits(keys, 7, counter)
        noise = ((bits & 0xFFFF) + (bits >> 16)).to(torch.float32) * (1.0 / 65536.0) - 1.0
        rgb = rgb + noise * (math.sqrt(6.0) * dev["noise_sigma"].view(-1, 1, 1, 1))
        return rgb.clamp(0.0, 1.0) * 2.0 - 1.0

    def _background(self, dev: dict[str, Tensor], batch: int, device: torch.device) -> Tensor:
        """Textured backgrounds in CIELAB [B,3,H,W], rendered at half size (they are smooth)."""
        height, width = self.size
        h2, w2 = (height + 1) // 2, (width + 1) // 2
        y = ((torch.arange(h2, device=device, dtype=torch.float32) + 0.5) / h2).view(1, 1, -1, 1)
        x = ((torch.arange(w2, device=device, dtype=torch.float32) + 0.5) / h2).view(1, 1, 1, -1)

        def col(name: str) -> Tensor:
            return dev[name].view(batch, 3, 1, 1)

        def scalar(name: str) -> Tensor:
            return dev[name].view(batch, 1, 1, 1)

        kind = dev["bg_type"].view(batch, 1, 1, 1)
        keys = dev["noise_key"]
        coarse = _value_noise(keys, 11, 5, (h2, w2))
        fine = _value_noise(keys, 12, 16, (h2, w2))
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
        treeline = col("ground_lab") * torch.tensor([0.55, 1.2, 0.8], device=device).view(
            1, 3, 1, 1
        )
        outdoor = torch.where(y < horizon, sky, torch.where(y < horizon + 0.05, treeline, ground))
        lab = torch.where(kind == 1, outdoor, lab)
        # Stripes (wallpaper, fences).
        wave = torch.sin(2 * math.pi * scalar("bg_freq") * (along + 0.05 * coarse))
        stripe = ((wave * 3.0).clamp(-1.0, 1.0) + 1.0) * 0.5
        lab = torch.where(kind == 2, torch.lerp(lab, col("bg_color_c"), stripe), lab)
        # Soft colour blobs, all at once: [B, K, h, w] weights.
        aspect = width / height
        blob = _uniform_hash(keys.view(-1, 1, 1), 20, torch.arange(30, device=device).view(1, 5, 6))
        blob_x, blob_y = blob[..., 0:1, None] * aspect, blob[..., 1:2, None]
        sigma = 0.08 + 0.2 * blob[..., 2:3, None]
        weight = torch.exp(-((x - blob_x).square() + (y - blob_y).square()) / (2 * sigma**2))
        blob_lab = torch.stack(
            [30 + 60 * blob[..., 3], 60 * blob[..., 4] - 30, 70 * blob[..., 5] - 30], -1
        )
        lab = _overlay(lab, blob_lab, 0.85 * weight * (kind == 3))
        # Bokeh: soft bright discs (on its own or over any other background).
        bokeh = (kind == 4) | dev["bokeh_extra"].view(batch, 1, 1, 1)
        disc = _uniform_hash(
            keys.view(-1, 1, 1), 40, torch.arange(60, device=device).view(1, 12, 5)
        )
        disc_x, disc_y = disc[..., 0:1, None] * aspect, disc[..., 1:2, None]
        disc_r = 0.02 + 0.07 * disc[..., 2:3, None]
        dist = ((x - disc_x).square() + (y - disc_y).square()).sqrt()
        alpha = ((disc_r - dist) / 0.012).clamp(0.0, 1.0) * (0.25 + 0.4 * disc[..., 3:4, None])
        light = torch.tensor([97.0, 0.0, 8.0], device=device)
        tint = torch.lerp(dev["bg_color_c"].view(batch, 1, 3), light, 0.6 + 0.4 * disc[..., 4:5])
        lab = _overlay(lab, tint, alpha * bokeh)
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


class ProceduralGenerator(nn.Module):
    """`SourceGenerator` of the embedded world: `sample(seeds) -> (photo, Scene)`, rendered on
    the device this module was moved to."""

    def __init__(self, resolution: int | Sequence[int] = 128, **world_options) -> None:
        super().__init__()
        self.world = ProceduralWorld(resolution=resolution, **world_options)
        # No weights; a buffer so that `.to(device)` decides where rendering happens.
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)

    @property
    def resolution(self) -> int | tuple[int, int]:
        height, width = self.world.size
        return height if height == width else (height, width)

    def sample(self, seeds: Tensor) -> tuple[Tensor, Scene]:
        """Photos [B, 3, H, W] in [-1, 1] and their Scene for int64 seeds [B]."""
        return self.world.render(seeds, device=self.device_anchor.device)

    def forward(self, seeds: Tensor) -> tuple[Tensor, Scene]:
        return self.sample(seeds)


class ProceduralMixer(nn.Module):
    """Stands in for CDSM: the character rendering of the scene the generator drew."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)

    def render(self, latents: Scene) -> Tensor:
        """The character rendering [B, 3, H, W] of the scenes in `latents`."""
        if not isinstance(latents, Scene):
            raise TypeError(
                "ProceduralMixer.render needs the Scene from ProceduralGenerator.sample, got "
                f"{type(latents).__name__}; use mixer=procedural only with generator=procedural"
            )
        return latents.character.to(self.device_anchor.device)

    def forward(self, latents: Scene) -> Tensor:
        return self.render(latents)


class ProceduralSegmenter(nn.Module):
    """Stands in for the face parser: returns the exact labels the world drew. It cannot parse
    an arbitrary image (use segmenter=bisenet for that)."""

    DOMAINS = ("source", "character")

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)

    def parse(self, images: Tensor, latents: Scene | None = None, domain: str = "source") -> Tensor:
        """Labels [B, H, W] of `images`: the photo's (`domain="source"`) or the character's."""
        if domain not in self.DOMAINS:
            raise ValueError(f"ProceduralSegmenter.parse: domain must be one of {self.DOMAINS}, "
                             f"got {domain!r}")  # fmt: skip
        if not isinstance(latents, Scene):
            raise ValueError(
                "ProceduralSegmenter can only return the labels of scenes the embedded world "
                f"rendered (pass its Scene as latents; got {type(latents).__name__}). To parse "
                "arbitrary images use segmenter=bisenet."
            )
        labels = latents.labels if domain == "source" else latents.character_labels
        if (
            images.dim() != 4
            or images.shape[0] != labels.shape[0]
            or images.shape[-2:] != labels.shape[-2:]
        ):
            raise ValueError(
                f"ProceduralSegmenter.parse: images {tuple(images.shape)} do not match the scene's "
                f"labels {tuple(labels.shape)}; parse the rendered images before resizing/cropping"
            )
        return labels.to(images.device)

    def forward(
        self, images: Tensor, latents: Scene | None = None, domain: str = "source"
    ) -> Tensor:
        return self.parse(images, latents, domain)
