"""Scene sampling of the embedded world: every random choice of a pair (framing, people, skin
tones, hair, clothes, pose, light, background) drawn on the CPU from the pair's own generator, so
a pair never depends on the rest of its batch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from portrait_toon.synthesis.latents import generator_for
from portrait_toon.synthesis.world.materials import (
    FIGURE_BOTTOM,
    HAIR_COLORS,
    HAIR_STYLES,
    IRIS_LAB,
    skin_lab_from_ita,
)

if TYPE_CHECKING:
    from portrait_toon.synthesis.world.renderer import ProceduralWorld

SCENE_DRAWS = 64  # uniforms drawn per pair for scene-level parameters
PERSON_DRAWS = 64  # uniforms drawn per person slot


class Columns:
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


def draw_parameters(
    world: ProceduralWorld, seeds: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every random choice of the scenes, drawn on the CPU from each pair's own generator:
    scene-level parameters [B, ...] and per-person-slot parameters [B, P, ...]."""
    seeds = torch.as_tensor(seeds)
    if seeds.dim() != 1 or seeds.dtype.is_floating_point or seeds.dtype == torch.bool:
        raise ValueError(
            f"ProceduralWorld.render: seeds must be a 1-D int64 tensor, got {seeds.dtype} "
            f"{tuple(seeds.shape)}"
        )
    seeds = seeds.detach().to("cpu", torch.int64)
    batch, slots = seeds.shape[0], world.max_people
    scene_draws = torch.empty(batch, SCENE_DRAWS, dtype=torch.float64)
    person_draws = torch.empty(batch, slots, PERSON_DRAWS, dtype=torch.float64)
    keys = torch.empty(batch, dtype=torch.int64)
    for row, seed in enumerate(seeds.tolist()):
        generator = generator_for(seed)
        scene_draws[row] = torch.rand(SCENE_DRAWS, generator=generator, dtype=torch.float64)
        person_draws[row] = torch.rand(
            slots, PERSON_DRAWS, generator=generator, dtype=torch.float64
        )
        keys[row] = torch.randint(0, 2**31 - 1, (1,), generator=generator)[0]

    height, width = world.size
    frame_width = width / height  # frame units: the height is 1
    c = Columns(scene_draws, "scene")
    p: dict[str, Tensor] = {"seeds": seeds, "noise_key": keys}
    num_people = 1 + c.choice(world.people_probs)
    p["num_people"] = num_people
    low_f, high_f = world.face_fraction_range
    high_f = torch.where(
        num_people > 1,
        torch.tensor(min(high_f, max(low_f, world.group_face_fraction_max)), dtype=torch.float64),
        torch.tensor(high_f, dtype=torch.float64),
    )
    main_face = torch.exp(math.log(low_f) + c.next() * (torch.log(high_f) - math.log(low_f)))
    # Head-and-shoulders portraits (single people) get an extra share of the draws.
    top_f = world.face_fraction_range[1]
    closeup_low = min(max(world.closeup_face_fraction, low_f), top_f)
    closeup_face = closeup_low + c.next() * (top_f - closeup_low)
    closeup = (c.next() < world.closeup_prob) & (num_people == 1)
    main_face = torch.where(closeup, closeup_face, main_face)
    main_ita = c.between(*world.ita_range)
    light_x = c.between(-0.75, 0.75)
    light_y = c.between(-0.65, 0.2)  # mostly from above (y points down)
    p["light"] = torch.stack(
        [light_x, light_y, torch.sqrt((1.0 - light_x**2 - light_y**2).clamp(min=0.05))], -1
    )
    p["shade_strength"] = c.between(0.6, 1.0)
    p["noise_sigma"] = c.between(*world.camera_noise)
    slot_shift = torch.floor(c.next() * num_people)
    draw_background(c, p)

    q = Columns(person_draws, "person")
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
    lowest = torch.minimum(torch.maximum(1.0 - FIGURE_BOTTOM * radius, top), top + 0.35)
    p["radius"], p["head_x"] = radius, head_x
    p["head_y"] = top + q.next() * (lowest - top)
    p["tilt"] = q.between(-1.0, 1.0) * world.max_tilt
    p["yaw"] = q.between(-0.3, 0.3)
    low_ita, high_ita = world.ita_range
    spread = q.between(-1.0, 1.0) * world.group_ita_spread
    ita = torch.where(
        slot == 0,
        main_ita.view(-1, 1),
        (main_ita.view(-1, 1) + spread).clamp(low_ita, high_ita),
    )
    p["ita"] = ita
    skin = skin_lab_from_ita(ita, b_jitter=q.between(-1.5, 1.5))
    skin[..., 1] = q.between(8.0, 14.0)
    p["skin_lab"] = skin
    hair_pick = torch.floor(q.next() * len(world.hair_color_ids)).long()
    p["hair_color"] = world.hair_color_ids[hair_pick.clamp(max=len(world.hair_color_ids) - 1)]
    hair_table = torch.tensor(list(HAIR_COLORS.values()), dtype=torch.float64)
    p["hair_lab"] = hair_table[p["hair_color"]] + torch.stack(
        [q.between(-4, 4), q.between(-2, 2), q.between(-3, 3)], -1
    )
    style = q.choice(world.hair_style_probs)
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
    ear_prob = torch.where(style == HAIR_STYLES.index("long"), 0.4, 1.0) * world.ears_prob
    p["ears"] = q.next() < ear_prob
    p["eye_spacing"] = q.between(0.36, 0.44)
    p["eye_size"] = q.between(0.85, 1.1)
    p["iris_lab"] = torch.tensor(IRIS_LAB, dtype=torch.float64)[
        torch.floor(q.next() * len(IRIS_LAB)).long().clamp(max=len(IRIS_LAB) - 1)
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


def draw_background(c: Columns, p: dict[str, Tensor]) -> None:
    """The scene-level background parameters (CIELAB colours, layout) into `p`."""
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


def flatten_people(
    dev: dict[str, Tensor], people: dict[str, Tensor], max_people: int
) -> dict[str, Tensor]:
    """Active persons as one flat list [N, ...]: geometry is computed only for people
    that exist. `owner` is each one's pair, `slot` its slot (0 = main, drawn last)."""
    active = people["active"]
    batch = active.shape[0]
    flat = {k: v[active] for k, v in people.items() if k != "active"}
    flat["slot"] = torch.arange(max_people, device=active.device).expand(batch, -1)[active]
    owner = torch.arange(batch, device=active.device).view(-1, 1).expand_as(active)[active]
    flat["owner"] = owner
    flat["scene_light"] = dev["light"]  # [B, 3], per photo
    flat["inv_radius"] = 1.0 / flat["radius"]
    flat["cos_tilt"], flat["sin_tilt"] = torch.cos(flat["tilt"]), torch.sin(flat["tilt"])
    return flat
