"""The embedded world's rasteriser: people painted as material maps (body, head, face parts,
hair) from their scene parameters, then layered front to back. Photo and character share the
body and the geometry; the character's head has its own proportions (`CharacterLook`)."""

from __future__ import annotations

import torch
from torch import Tensor

from portrait_toon.synthesis.world.materials import (
    FOREARM,
    HAIR_STYLES,
    HIP,
    LEG,
    MATERIAL,
    SHOULDER,
    UPPER_ARM,
    CharacterLook,
)
from portrait_toon.synthesis.world.shapes import capsule, ellipse, head_shape, rounded_box


def local_coords(persons: dict[str, Tensor], grid_x: Tensor, grid_y: Tensor):
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


def paint_body(persons: dict[str, Tensor], grid_x: Tensor, grid_y: Tensor) -> Tensor:
    """Back hair, neck, legs, torso and arms, shared by photo and character: [N, H, W] uint8."""
    bx, by, u, v = local_coords(persons, grid_x, grid_y)
    count = persons["radius"].shape[0]
    canvas = torch.zeros(count, grid_y.shape[1], grid_x.shape[2], dtype=torch.uint8,
                         device=grid_x.device)  # fmt: skip
    style = persons["hair_style"].view(-1, 1, 1)
    length = persons["hair_length"].view(-1, 1, 1)
    long_back = rounded_box(u, v, 0.0, 0.85 * length, 1.3, 2.15 * length, 0.9)
    angle = torch.atan2(u, v + 0.25)
    curls = (u.square() + (v + 0.25).square()).sqrt() < 1.55 * (1 + 0.06 * torch.sin(9 * angle))
    back = (long_back & (style == HAIR_STYLES.index("long"))) | (
        curls & (style == HAIR_STYLES.index("curly"))
    )
    canvas.masked_fill_(back, MATERIAL["hair_back"])
    canvas.masked_fill_(capsule(bx, by, 0.0, 0.5, 0.0, 2.2, 0.5), MATERIAL["neck"])
    spread = persons["leg_spread"].view(-1, 1, 1)
    for sign in (-1.0, 1.0):
        hip_x, hip_y = sign * HIP[0], HIP[1]
        foot_x = hip_x + sign * LEG * torch.sin(spread)
        foot_y = hip_y + LEG * torch.cos(spread)
        canvas.masked_fill_(capsule(bx, by, hip_x, hip_y, foot_x, foot_y, 0.72), MATERIAL["pants"])
        canvas.masked_fill_(
            ellipse(bx, by, foot_x + sign * 0.25, foot_y + 0.25, 0.6, 0.32), MATERIAL["shoe"]
        )
    canvas.masked_fill_(rounded_box(bx, by, 0.0, 4.45, 2.0, 2.85, 1.0), MATERIAL["top"])
    long_sleeves = persons["long_sleeves"].view(-1, 1, 1)
    for side, sign in (("left", -1.0), ("right", 1.0)):
        upper = persons[f"arm_{side}"].view(-1, 1, 1)
        lower = upper - persons[f"elbow_{side}"].view(-1, 1, 1)
        sx, sy = sign * SHOULDER[0], SHOULDER[1]
        ex = sx + sign * UPPER_ARM * torch.sin(upper)
        ey = sy + UPPER_ARM * torch.cos(upper)
        wx = ex + sign * FOREARM * torch.sin(lower)
        wy = ey + FOREARM * torch.cos(lower)
        canvas.masked_fill_(capsule(bx, by, sx, sy, ex, ey, 0.5), MATERIAL["sleeve"])
        forearm = capsule(bx, by, ex, ey, wx, wy, 0.4)
        canvas.masked_fill_(forearm & long_sleeves, MATERIAL["sleeve"])
        canvas.masked_fill_(forearm & ~long_sleeves, MATERIAL["limb_skin"])
        hand_x = wx + sign * 0.3 * torch.sin(lower)
        hand_y = wy + 0.3 * torch.cos(lower)
        canvas.masked_fill_(ellipse(bx, by, hand_x, hand_y, 0.42, 0.42), MATERIAL["limb_skin"])
    return canvas


def paint_head(
    persons: dict[str, Tensor],
    body: Tensor,
    grid_x: Tensor,
    grid_y: Tensor,
    *,
    character: CharacterLook | None,
) -> Tensor:
    """Ears, face, face parts and front hair over the body canvas. [N, H, W] uint8.

    The character keeps the geometry (position, tilt, yaw, gaze, hair style) with its own
    proportions: a larger, rounder skull, a smaller chin, big eyes, small nose and mouth."""
    _, _, u, v = local_coords(persons, grid_x, grid_y)
    canvas = body.clone()
    view = {k: t.view(-1, 1, 1) for k, t in persons.items() if t.dim() == 1}
    head = character.head_scale if character is not None else 1.0
    for name, sign in (("ear_l", -1.0), ("ear_r", 1.0)):
        ear = ellipse(u, v, sign * 0.97 * head - 0.3 * view["yaw"], 0.1, 0.2, 0.32)
        canvas.masked_fill_(ear & view["ears"], MATERIAL[name])
    chin = 1.22 * view["chin"] * (character.chin_scale if character is not None else 1.0)
    face = head_shape(u, v, head, 1.28 * head, chin, 0.35 if character is not None else 0.25)
    canvas.masked_fill_(face, MATERIAL["face"])
    # Face parts lie inside the face: test them on the face pixels only (a compact list),
    # which costs a fraction of testing every pixel of the frame for every person.
    flat = face.view(-1).nonzero().squeeze(1)
    owner = torch.div(flat, face[0].numel(), rounding_mode="floor")
    at = {k: t[owner] for k, t in persons.items() if t.dim() == 1}
    at["chin"] = chin.view(-1)[owner]
    parts = torch.full_like(flat, MATERIAL["face"], dtype=torch.uint8)
    face_u, face_v = u.view(-1)[flat], v.view(-1)[flat]
    if character is not None:
        paint_character_face(parts, face_u, face_v, at, character.eye_scale)
    else:
        paint_photo_face(parts, face_u, face_v, at)
    canvas.view(-1)[flat] = parts
    paint_front_hair(canvas, u, v, view, head)
    return canvas


def paint_photo_face(parts: Tensor, u: Tensor, v: Tensor, at: dict[str, Tensor]) -> None:
    """Nose, brows, eyes (sclera, iris, pupil), lips and mouth of a photo face. `parts` and
    the coordinates are one entry per face pixel; `at` holds the owner's parameters."""
    yaw = at["yaw"]
    nose = ellipse(u, v, 1.2 * yaw, 0.33, 0.12 * at["nose_size"], 0.22 * at["nose_size"])
    parts.masked_fill_(nose, MATERIAL["nose"])
    size = at["eye_size"]
    for suffix, sign in (("l", -1.0), ("r", 1.0)):
        eye_x = sign * at["eye_spacing"] + yaw
        brow_u = u - eye_x
        brow = ellipse(brow_u, v + 0.8 * brow_u.square(), 0.0, -0.25 + at["brow_raise"],
                        0.25, at["brow_thickness"])  # fmt: skip
        parts.masked_fill_(brow, MATERIAL[f"brow_{suffix}"])
        eye = ellipse(u, v, eye_x, 0.05, 0.2 * size, 0.085 * size)
        parts.masked_fill_(eye, MATERIAL[f"sclera_{suffix}"])
        iris_x = eye_x + 0.08 * size * at["gaze_x"]
        iris_y = 0.05 + 0.02 * size * at["gaze_y"]
        iris = ellipse(u, v, iris_x, iris_y, 0.085 * size, 0.085 * size) & eye
        parts.masked_fill_(iris, MATERIAL[f"iris_{suffix}"])
        pupil = ellipse(u, v, iris_x, iris_y, 0.035 * size, 0.035 * size) & eye
        parts.masked_fill_(pupil, MATERIAL[f"pupil_{suffix}"])
    width = at["mouth_width"]
    parts.masked_fill_(ellipse(u, v, yaw, 0.66, 0.3 * width, 0.07), MATERIAL["lip_upper"])
    parts.masked_fill_(ellipse(u, v, yaw, 0.76, 0.27 * width, 0.09), MATERIAL["lip_lower"])
    gap = ellipse(u, v, yaw, 0.715, 0.25 * width, 0.025 + 0.05 * at["mouth_open"])
    parts.masked_fill_(gap, MATERIAL["mouth"])


def paint_character_face(
    parts: Tensor, u: Tensor, v: Tensor, at: dict[str, Tensor], eye_scale: float
) -> None:
    """The character's face: big eyes with highlights, blush, tiny nose, small mouth."""
    yaw = at["yaw"]
    size = eye_scale
    spacing = at["eye_spacing"] + 0.02
    parts.masked_fill_(ellipse(u, v, 1.2 * yaw, 0.4, 0.05, 0.05), MATERIAL["nose"])
    for suffix, sign in (("l", -1.0), ("r", 1.0)):
        eye_x = sign * spacing + yaw
        blush = ellipse(u, v, eye_x + sign * 0.04, 0.42, 0.15, 0.06)
        parts.masked_fill_(blush, MATERIAL["blush"])
        brow_u = u - eye_x
        brow = ellipse(brow_u, v + 1.0 * brow_u.square(), 0.0, -0.2 + at["brow_raise"],
                        0.22, 0.035)  # fmt: skip
        parts.masked_fill_(brow, MATERIAL[f"brow_{suffix}"])
        eye = ellipse(u, v, eye_x, 0.13, 0.25 * size, 0.21 * size)
        parts.masked_fill_(eye, MATERIAL[f"sclera_{suffix}"])
        iris_x = eye_x + 0.07 * size * at["gaze_x"]
        iris_y = 0.14 + 0.02 * size * at["gaze_y"]
        iris = ellipse(u, v, iris_x, iris_y, 0.15 * size, 0.19 * size) & eye
        parts.masked_fill_(iris, MATERIAL[f"iris_{suffix}"])
        pupil = ellipse(u, v, iris_x, iris_y + 0.02, 0.07 * size, 0.1 * size) & eye
        parts.masked_fill_(pupil, MATERIAL[f"pupil_{suffix}"])
        shine = ellipse(u, v, iris_x - 0.06 * size, iris_y - 0.08 * size, 0.05 * size,
                         0.05 * size) & eye  # fmt: skip
        parts.masked_fill_(shine, MATERIAL[f"shine_{suffix}"])
    # The mouth moves up with the shorter chin.
    mouth_y = 0.5 * at["chin"] / 1.22 + 0.08
    width = 0.55 * at["mouth_width"]
    parts.masked_fill_(ellipse(u, v, yaw, mouth_y, 0.3 * width, 0.035), MATERIAL["lip_upper"])
    lower = ellipse(u, v, yaw, mouth_y + 0.045, 0.27 * width, 0.045)
    parts.masked_fill_(lower, MATERIAL["lip_lower"])
    gap = ellipse(u, v, yaw, mouth_y + 0.025, 0.24 * width, 0.012 + 0.05 * at["mouth_open"])
    parts.masked_fill_(gap, MATERIAL["mouth"])


def paint_front_hair(
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
    cap = ellipse(u, v, 0.0, -0.08 * head, cap_x, cap_y) & (v < hairline)
    locks = (
        ellipse(u, v, 0.0, 0.3, 1.22 * head, 1.75 * head)
        & ((u - 0.3 * view["yaw"]).abs() > 0.8 * head)
        & (v < 1.2)
        & (style == HAIR_STYLES.index("long"))
    )
    bun = ellipse(u, v, 0.0, -1.45 * head, 0.45, 0.42) & (style == HAIR_STYLES.index("bun"))
    canvas.masked_fill_(cap | locks | bun, MATERIAL["hair"])


def composite_people(
    materials: Tensor, persons: dict[str, Tensor], batch: int, max_people: int
) -> tuple[Tensor, Tensor]:
    """People over each other, farthest (highest slot) first: material [B,H,W] uint8 and
    the flat person index drawn at each pixel (-1 = background)."""
    height, width = materials.shape[-2:]
    device = materials.device
    out_mat = torch.zeros(batch, height, width, dtype=torch.uint8, device=device)
    out_person = torch.full((batch, height, width), -1, dtype=torch.int64, device=device)
    owner, slot = persons["owner"], persons["slot"]
    flat_index = torch.arange(owner.shape[0], device=device)
    for depth in range(max_people - 1, -1, -1):
        chosen = slot == depth
        if not bool(chosen.any()):
            continue
        rows = owner[chosen]
        drawn = materials[chosen] != 0
        out_mat[rows] = torch.where(drawn, materials[chosen], out_mat[rows])
        person = flat_index[chosen].view(-1, 1, 1).expand_as(drawn)
        out_person[rows] = torch.where(drawn, person, out_person[rows])
    return out_mat, out_person
