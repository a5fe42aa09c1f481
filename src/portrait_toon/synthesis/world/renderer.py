"""ProceduralWorld: the embedded world's renderer. It validates the world's options, samples the
scenes (world/sampling.py) and renders each pair's photo, exact parse labels and character
rendering of the same scene, batched on one device."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from kornia.color import lab_to_rgb
from torch import Tensor

from portrait_toon.synthesis.world.backgrounds import paint_background
from portrait_toon.synthesis.world.character import shade_character
from portrait_toon.synthesis.world.materials import (
    HAIR_COLORS,
    HAIR_STYLES,
    MATERIAL_LABEL,
    CharacterLook,
    rgb255_to_lab,
)
from portrait_toon.synthesis.world.photo import camera, shade_photo, soften
from portrait_toon.synthesis.world.rasterizer import composite_people, paint_body, paint_head
from portrait_toon.synthesis.world.sampling import draw_parameters, flatten_people
from portrait_toon.synthesis.world.scene import Scene
from portrait_toon.synthesis.world.shading import correct_skin


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
        self.character = CharacterLook(
            skin_lab=rgb255_to_lab(character_skin_rgb, "character_skin_rgb"),
            hair_lab=rgb255_to_lab(character_hair_rgb, "character_hair_rgb"),
            eye_lab=rgb255_to_lab(character_eye_rgb, "character_eye_rgb"),
            outline_lab=rgb255_to_lab(character_outline_rgb, "character_outline_rgb"),
            head_scale=float(character_head_scale),
            chin_scale=float(character_chin_scale),
            eye_scale=float(character_eye_scale),
        )

    @staticmethod
    def _pair(values: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
        pair = tuple(float(v) for v in values)
        if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
            raise ValueError(
                f"ProceduralWorld: {name} must be [min, max] within [{low}, {high}], got {values!r}"
            )
        return pair

    def draw_parameters(self, seeds: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every random choice of the scenes (see world/sampling.py): scene-level parameters
        [B, ...] and per-person-slot parameters [B, P, ...]."""
        return draw_parameters(self, seeds)

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
        persons = flatten_people(dev, people, self.max_people)
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / height
        grid_y, grid_x = ys.view(1, -1, 1), xs.view(1, 1, -1)

        background_lab = paint_background(dev, batch, device, self.size)
        body = paint_body(persons, grid_x, grid_y)
        photo_materials = paint_head(persons, body, grid_x, grid_y, character=None)
        character_materials = paint_head(persons, body, grid_x, grid_y, character=self.character)
        photo_mat, photo_person = composite_people(photo_materials, persons, batch, self.max_people)
        char_mat, char_person = composite_people(
            character_materials, persons, batch, self.max_people
        )
        slot_of = torch.cat([persons["slot"], persons["slot"].new_full((1,), -1)])
        photo_slot = slot_of[photo_person]  # person -1 (background) picks the appended -1
        char_slot = slot_of[char_person]

        label_table = MATERIAL_LABEL.to(device)
        photo_labels = label_table[photo_mat.long()]
        photo_lab = shade_photo(
            photo_mat, photo_person, persons, dev, background_lab, grid_x, grid_y
        )
        photo_lab = correct_skin(
            soften(photo_lab), photo_mat, photo_labels, photo_slot, people["skin_lab"]
        )
        photo = camera(photo_lab, dev)

        char_lab, char_labels = shade_character(
            char_mat, char_person, persons, background_lab, grid_x, grid_y, self.character
        )
        char_skin = torch.tensor(self.character.skin_lab, device=device)
        char_lab = correct_skin(
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
