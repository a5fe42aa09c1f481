"""Shapes of the embedded world's rasteriser: boolean inside-tests on broadcastable coordinate
maps (no per-pixel Python)."""

from __future__ import annotations

import torch
from torch import Tensor

Value = Tensor | float  # a shape parameter: a number or a tensor broadcastable to the maps


def ellipse(u: Tensor, v: Tensor, cu: Value, cv: Value, ru: Value, rv: Value) -> Tensor:
    """Points inside the axis-aligned ellipse centred (cu, cv) with radii (ru, rv)."""
    return ((u - cu) / ru).square() + ((v - cv) / rv).square() < 1.0


def capsule(
    x: Tensor, y: Tensor, ax: Value, ay: Value, bx: Value, by: Value, radius: Value
) -> Tensor:
    """Points within `radius` of the segment a-b."""
    dx, dy = bx - ax, by - ay
    px, py = x - ax, y - ay
    t = ((px * dx + py * dy) / (dx * dx + dy * dy + 1e-6)).clamp(0.0, 1.0)
    return (px - t * dx).square() + (py - t * dy).square() < radius * radius


def rounded_box(
    x: Tensor, y: Tensor, cx: Value, cy: Value, half_x: Value, half_y: Value, corner: Value
) -> Tensor:
    """Points inside the box centred (cx, cy) with half sizes and rounded corners."""
    qx = ((x - cx).abs() - (half_x - corner)).clamp(min=0.0)
    qy = ((y - cy).abs() - (half_y - corner)).clamp(min=0.0)
    return qx.square() + qy.square() < corner * corner


def head_shape(u: Tensor, v: Tensor, rx: float, ry_up: float, ry_low: Tensor, jaw: float) -> Tensor:
    """An egg: round skull (ry_up), a chin of height ry_low that narrows by `jaw` at the bottom."""
    ry = torch.where(v < 0, torch.full_like(v, ry_up), ry_low.expand_as(v))
    width = rx * (1.0 - jaw * (v / ry_low).clamp(0.0, 1.0).square())
    return (u / width).square() + (v / ry).square() < 1.0
