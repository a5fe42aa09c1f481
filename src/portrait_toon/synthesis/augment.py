"""Paired geometric augmentation: one random scale/crop/flip per pair, applied to every tensor.

Parameters are drawn on the CPU from the pair's own seed (stream "crop"), so source, target and
masks move identically on any device. Never a colour change on one side only (docs/method.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from portrait_toon.synthesis.latents import generator_for

__all__ = ["CropParams", "crop_flip_grid", "paired_crop_flip", "sample_crop_params"]


@dataclass(frozen=True)
class CropParams:
    """Per-pair crop: side `scale` (fraction of the image), centre in [-1, 1] coordinates
    (x right, y down; align_corners=False convention) and a horizontal flip. CPU tensors [B]."""

    scale: torch.Tensor
    center_x: torch.Tensor
    center_y: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return int(self.scale.shape[0])


def sample_crop_params(
    seeds: torch.Tensor,
    scale_range: Sequence[float] = (0.8, 1.0),
    flip: bool = True,
) -> CropParams:
    """Draw each pair's crop from its seed: scale ~ U[scale_range], a centre that keeps the crop
    inside the image, flip with probability 0.5 (when `flip`)."""
    low, high = float(scale_range[0]), float(scale_range[1])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            f"crop.scale_range must satisfy 0 < low <= high <= 1 (a crop never leaves the "
            f"image), got {list(scale_range)}"
        )
    rows = []
    for seed in torch.as_tensor(seeds).reshape(-1).tolist():
        u = torch.rand(4, generator=generator_for(int(seed)), dtype=torch.float64)
        scale = low + float(u[0]) * (high - low)
        margin = 1.0 - scale  # the centre may move this far (normalised) and stay inside
        rows.append(
            (
                scale,
                (2 * float(u[1]) - 1) * margin,
                (2 * float(u[2]) - 1) * margin,
                flip and float(u[3]) < 0.5,
            )
        )
    if not rows:
        empty = torch.empty(0, dtype=torch.float64)
        return CropParams(empty, empty, empty, torch.empty(0, dtype=torch.bool))
    scale, center_x, center_y, flips = zip(*rows)
    return CropParams(
        scale=torch.tensor(scale, dtype=torch.float64),
        center_x=torch.tensor(center_x, dtype=torch.float64),
        center_y=torch.tensor(center_y, dtype=torch.float64),
        flip=torch.tensor(flips, dtype=torch.bool),
    )


def crop_flip_grid(
    params: CropParams, size: tuple[int, int], device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Sampling grid [B, H, W, 2] of the crops: output (x, y) samples the input at
    `(scale * sign * x + center_x, scale * y + center_y)`, sign = -1 when flipped."""
    sign = 1.0 - 2.0 * params.flip.to(torch.float64)
    theta = torch.zeros(len(params), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = params.scale * sign
    theta[:, 0, 2] = params.center_x
    theta[:, 1, 1] = params.scale
    theta[:, 1, 2] = params.center_y
    shape = (len(params), 1, int(size[0]), int(size[1]))
    grid = F.affine_grid(theta, list(shape), align_corners=False)
    return grid.to(device=device, dtype=dtype)


def paired_crop_flip(tensors: Sequence[torch.Tensor], params: CropParams) -> list[torch.Tensor]:
    """Apply the same per-pair crop + resize-back + flip to every tensor [B, C, H, W].

    Float tensors are resampled bilinearly; integer tensors (label maps as [B, 1, H, W]) with
    nearest neighbour. All tensors must share B, H and W.
    """
    if not tensors:
        return []
    batch, height, width = tensors[0].shape[0], tensors[0].shape[-2], tensors[0].shape[-1]
    for tensor in tensors:
        if tensor.dim() != 4 or tensor.shape[0] != batch or tensor.shape[-2:] != (height, width):
            raise ValueError(
                f"paired_crop_flip: every tensor must be [B={batch}, C, {height}, {width}], "
                f"got {tuple(tensor.shape)}"
            )
    if len(params) != batch:
        raise ValueError(f"paired_crop_flip: {len(params)} crop parameters for {batch} pairs")
    if batch == 0:
        return list(tensors)
    device = tensors[0].device
    float_dtype = next((t.dtype for t in tensors if t.dtype.is_floating_point), torch.float32)
    grid = crop_flip_grid(params, (height, width), device, float_dtype)
    outputs = []
    for tensor in tensors:
        if tensor.dtype.is_floating_point:
            out = F.grid_sample(
                tensor,
                grid.to(tensor.dtype),
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )
        else:
            out = (
                F.grid_sample(
                    tensor.to(float_dtype),
                    grid,
                    mode="nearest",
                    padding_mode="border",
                    align_corners=False,
                )
                .round()
                .to(tensor.dtype)
            )
        outputs.append(out)
    return outputs
