"""CutFace (docs/method.md §3): face tiles pasted into the SAME boxes of L and B(L).

With probability p a pair becomes a landscape `L` (source side) and `B(L)` (target side) with
k ~ U{1..K} non-overlapping square tiles; each tile holds a crop around the pair's head taken
from `X_src` (source side) and from `X_cr` (target side) with the same box. Outside the tiles
the two sides are `L` and `B(L)` exactly. Every random choice comes from the pair's "cutface"
seed on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from portrait_toon.synthesis.latents import generator_for

__all__ = ["CutFacePlan", "Tile", "head_box", "head_boxes", "paste_tiles", "sample_cutface"]

# Classes that only a head has (brows, eyes, glasses, ears, nose, mouth, lips, hair): a head
# mask component holding one of them is a head, not a hand or an arm (a parser calls those
# skin as well).
FACE_FEATURE_IDS: tuple[int, ...] = (*range(2, 14), 17)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Tile:
    """A square box of the output (`top`, `left`, `side` px) and how its content is cut:
    a square around one of the pair's heads (`pick` in [0, 1) chooses which) `content_scale`
    times the head box's size, its centre moved by `shift_y`/`shift_x` (fractions of that
    square), mirrored when `flip`."""

    top: int
    left: int
    side: int
    content_scale: float
    shift_y: float
    shift_x: float
    flip: bool
    pick: float = 0.0

    def overlaps(self, other: Tile) -> bool:
        return not (
            self.top + self.side <= other.top
            or other.top + other.side <= self.top
            or self.left + self.side <= other.left
            or other.left + other.side <= self.left
        )


@dataclass(frozen=True)
class CutFacePlan:
    """The tiles of one CutFace pair (at least one)."""

    tiles: tuple[Tile, ...]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + float(torch.rand(1, generator=generator, dtype=torch.float64)) * (high - low)


def sample_cutface(
    seed: int,
    size: tuple[int, int],
    p: float = 0.3,
    max_faces: int = 4,
    side_range: Sequence[float] = (0.15, 0.5),
    max_tries: int = 50,
    content_scale_range: Sequence[float] = (1.2, 1.6),
    content_shift: float = 0.1,
) -> CutFacePlan | None:
    """Decide from `seed` whether the pair is a CutFace pair and, if so, where its tiles go.

    k ~ U{1..max_faces} tiles, side ~ U[side_range] * min(H, W), placed uniformly; a tile that
    overlaps an earlier one is redrawn up to `max_tries` times, then dropped (so k is an upper
    bound; the first tile always fits). Returns None for an ordinary pair.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cutface.p must be in [0, 1], got {p}")
    if max_faces < 1:
        raise ValueError(f"cutface.max_faces must be >= 1, got {max_faces}")
    low, high = float(side_range[0]), float(side_range[1])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"cutface.side_range must satisfy 0 < low <= high <= 1, got {side_range}")
    scale_low, scale_high = float(content_scale_range[0]), float(content_scale_range[1])
    if not 0.0 < scale_low <= scale_high:
        raise ValueError(
            f"cutface.content_scale_range must satisfy 0 < low <= high, got {content_scale_range}"
        )
    if max_tries < 1:
        raise ValueError(f"cutface.max_tries must be >= 1, got {max_tries}")
    generator = generator_for(int(seed))
    if float(torch.rand(1, generator=generator, dtype=torch.float64)) >= p:
        return None
    height, width = int(size[0]), int(size[1])
    short = min(height, width)
    count = int(torch.randint(1, max_faces + 1, (1,), generator=generator))
    tiles: list[Tile] = []
    for _ in range(count):
        for _ in range(max_tries):
            side = max(1, min(short, round(_uniform(generator, low, high) * short)))
            top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
            tile = Tile(
                top=top,
                left=left,
                side=side,
                content_scale=_uniform(generator, *content_scale_range),
                shift_y=_uniform(generator, -content_shift, content_shift),
                shift_x=_uniform(generator, -content_shift, content_shift),
                flip=bool(torch.rand(1, generator=generator) < 0.5),
                pick=float(torch.rand(1, generator=generator, dtype=torch.float64)),
            )
            if not any(tile.overlaps(other) for other in tiles):
                tiles.append(tile)
                break
    return CutFacePlan(tiles=tuple(tiles))


def head_box(head_mask: torch.Tensor, threshold: float = 0.5) -> Box:
    """(top, left, bottom, right) of the region where `head_mask` [1, H, W] > threshold,
    in pixels (bottom/right exclusive); the whole image when there is no head."""
    rows = (head_mask[0] > threshold).any(dim=1).nonzero()
    cols = (head_mask[0] > threshold).any(dim=0).nonzero()
    height, width = head_mask.shape[-2:]
    if rows.numel() == 0:
        return 0.0, 0.0, float(height), float(width)
    return float(rows[0]), float(cols[0]), float(rows[-1] + 1), float(cols[-1] + 1)


def head_boxes(
    head_mask: torch.Tensor, labels: torch.Tensor | None = None, threshold: float = 0.5
) -> list[Box]:
    """One (top, left, bottom, right) box per head: connected components of the head mask
    [1, H, W]; with `labels` [H, W], only components holding a face feature (eyes, hair, ...)
    count, so hands and bare arms (parsed as skin) are not taken for heads. Falls back to the
    largest component, then to the whole image."""
    mask = (head_mask[0] > threshold).to("cpu", torch.uint8).numpy()
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return [head_box(head_mask, threshold)]
    keep = list(range(1, count))
    if labels is not None:
        features = torch.isin(labels.cpu(), torch.tensor(FACE_FEATURE_IDS)).numpy()
        with_features = set(np.unique(components[features & (components > 0)]).tolist())
        if with_features:
            keep = sorted(with_features)
        else:
            keep = [1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    boxes = []
    for component in keep:
        left, top, width, height = (int(v) for v in stats[component, :4])
        boxes.append((float(top), float(left), float(top + height), float(left + width)))
    return boxes


def _content_box(tile: Tile, box: Box, size: tuple[int, int]) -> tuple[int, int, int]:
    """Integer square (top, left, side) around the head box, clamped inside the image."""
    top, left, bottom, right = box
    height, width = size
    side = max(bottom - top, right - left) * tile.content_scale
    side = int(max(1, min(round(side), height, width)))
    center_y = (top + bottom) / 2 + tile.shift_y * side
    center_x = (left + right) / 2 + tile.shift_x * side
    crop_top = int(min(max(round(center_y - side / 2), 0), height - side))
    crop_left = int(min(max(round(center_x - side / 2), 0), width - side))
    return crop_top, crop_left, side


def _tile_alpha(side: int, feather_px: float, device, dtype) -> torch.Tensor:
    """1 inside the tile, ramping to 0 over `feather_px` pixels at its border: [1, 1, s, s]."""
    if feather_px <= 0:
        return torch.ones(1, 1, side, side, device=device, dtype=dtype)
    centres = torch.arange(side, device=device, dtype=dtype) + 0.5
    to_edge = torch.minimum(centres, side - centres)
    ramp = (to_edge / feather_px).clamp(0.0, 1.0)
    return torch.minimum(ramp[:, None], ramp[None, :])[None, None]


def paste_tiles(
    source: torch.Tensor,
    target: torch.Tensor,
    head_mask: torch.Tensor,
    skin_mask: torch.Tensor,
    landscape: torch.Tensor,
    landscape_target: torch.Tensor,
    plan: CutFacePlan,
    feather_px: float = 0.0,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build one CutFace pair. Inputs are single images [1, C, H, W] (source/target [-1, 1],
    masks [0, 1]); returns `(source, target, head_mask, skin_mask)` of the new pair, where the
    masks are the pasted tiles' masks (times the tile's feathered alpha). Pixels outside every
    tile are exactly `landscape` / `landscape_target` (and 0 in the masks). `labels` [1, H, W]
    (the source parse) lets tiles pick heads only, not hands (see `head_boxes`)."""
    size = (source.shape[-2], source.shape[-1])
    stacked = torch.cat([source, target, head_mask, skin_mask], dim=1)
    out = torch.cat(
        [landscape, landscape_target, torch.zeros_like(head_mask), torch.zeros_like(skin_mask)],
        dim=1,
    )
    boxes = head_boxes(head_mask[0], None if labels is None else labels[0])
    for tile in plan.tiles:
        box = boxes[min(int(tile.pick * len(boxes)), len(boxes) - 1)]
        crop_top, crop_left, crop_side = _content_box(tile, box, size)
        content = stacked[..., crop_top : crop_top + crop_side, crop_left : crop_left + crop_side]
        content = F.interpolate(
            content,
            size=(tile.side, tile.side),
            mode="bilinear",
            align_corners=False,
            antialias=crop_side > tile.side,
        )
        if tile.flip:
            content = content.flip(-1)
        alpha = _tile_alpha(tile.side, feather_px, content.device, content.dtype)
        rows = slice(tile.top, tile.top + tile.side)
        cols = slice(tile.left, tile.left + tile.side)
        region = out[..., rows, cols]
        # lerp returns `content` exactly where alpha == 1 (hard-edged tiles copy bit for bit).
        blended = torch.lerp(region, content, alpha)
        # Masks: only the pasted heads count (the landscape has none), so no blend there.
        blended[:, 6:] = alpha * content[:, 6:]
        out[..., rows, cols] = torch.where(alpha > 0, blended, region)
    return out[:, 0:3], out[:, 3:6], out[:, 6:7], out[:, 7:8]
