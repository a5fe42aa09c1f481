"""Device-side randomness of the embedded world: integer hashing of (pair key, salt, pixel), so
per-pixel noise needs no generator, costs no host->device copy and is the same on every device
and batch composition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MASK32 = 0xFFFFFFFF


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser on int64 tensors holding values in [0, 2^32) (no overflow:
    every product stays below 2^59)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


def hash_bits(keys: Tensor, salt: int, counter: Tensor) -> Tensor:
    """32 random bits (int64 in [0, 2^32)) per (key [B, 1.., 1], counter [...]) pair."""
    mixed = (keys + hash32((counter + salt * 0x9E3779B) & MASK32)) & MASK32
    return hash32(mixed)


def uniform_hash(keys: Tensor, salt: int, counter: Tensor) -> Tensor:
    """Uniform [0, 1) floats: one per (key [B, 1.., 1], counter [...]) pair."""
    return hash_bits(keys, salt, counter).to(torch.float32) * (1.0 / 4294967296.0)


def value_noise(keys: Tensor, salt: int, cells: int, size: tuple[int, int]) -> Tensor:
    """Smooth noise in about [-1, 1]: hashed lattice values, bicubic-interpolated. [B, 1, H, W]."""
    height, width = size
    cells_y = max(1, cells)
    cells_x = max(1, round(cells * width / height))
    device = keys.device
    iy = torch.arange(cells_y + 1, device=device).view(1, 1, -1, 1)
    ix = torch.arange(cells_x + 1, device=device).view(1, 1, 1, -1)
    lattice = uniform_hash(keys.view(-1, 1, 1, 1), salt, iy * 4099 + ix) * 2.0 - 1.0
    return F.interpolate(lattice, size=size, mode="bicubic", align_corners=True)
