"""Per-pair seeds: pair `i` draws all its randomness from counter-based seeds of (base_seed, i).

A pair is a pure function of `(base_seed, index)` on any device, rank, batch composition or
rerun: every random quantity of a pair comes from a CPU `torch.Generator` seeded with
`pair_seed(base_seed, index, stream)`, one independent stream per purpose.
"""

from __future__ import annotations

import hashlib

import torch

# splitmix64 constants (Steele, Lea & Flood 2014), written as signed int64 so that torch's
# two's-complement int64 arithmetic wraps exactly like uint64 arithmetic.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX_1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX_2 = 0x94D049BB133111EB - (1 << 64)
_SEED_MASK = (1 << 63) - 1  # seeds are returned non-negative (numpy/torch/hydra friendly)

STREAMS: tuple[str, ...] = ("latent", "cutface", "crop", "landscape", "noise")
"""The stream names in use (docs/interfaces.md); any other name works as well."""


def _to_signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64: torch's `>>` is arithmetic on signed ints."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: a bijection of the 64-bit words (so no two counters collide)."""
    x = (x ^ _shift_right(x, 30)) * _MIX_1
    x = (x ^ _shift_right(x, 27)) * _MIX_2
    return x ^ _shift_right(x, 31)


def _mix64_int(value: int) -> int:
    return int(_mix64(torch.tensor([_to_signed(value)], dtype=torch.int64))[0])


def _stream_key(base_seed: int, stream: str) -> int:
    """64-bit key of (base_seed, stream); the stream name enters through a stable hash."""
    digest = hashlib.blake2b(stream.encode("utf-8"), digest_size=8).digest()
    stream_word = int.from_bytes(digest, "little")
    return _mix64_int(_mix64_int(base_seed) ^ stream_word)


def pair_seed(base_seed: int, index: torch.Tensor | int, stream: str) -> torch.Tensor:
    """One seed per (pair, stream): `mix64(key(base_seed, stream) + (index + 1) * gamma)`.

    Counter-based (splitmix64-style), computed on the CPU in int64 with wraparound, so the
    seed of pair `i` never depends on which other pairs are drawn. Within one stream distinct
    indices map to distinct 64-bit words (the map is a bijection); the top bit is dropped so
    seeds are non-negative. Returns an int64 CPU tensor shaped like `index`.
    """
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"pair_seed: stream must be a non-empty string, got {stream!r}")
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise TypeError(f"pair_seed: index must be an integer tensor, got dtype {index.dtype}")
    index = index.detach().to(device="cpu", dtype=torch.int64)
    key = _stream_key(int(base_seed), stream)
    counter = (index + 1) * _GOLDEN_GAMMA + key
    return _mix64(counter) & _SEED_MASK


def generator_for(seed: int | torch.Tensor) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `seed` (a Python int or a one-element tensor)."""
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1:
            shape = tuple(seed.shape)
            raise ValueError(f"generator_for: expected one seed, got a tensor of shape {shape}")
        seed = int(seed.item())
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed) & ((1 << 64) - 1))
    return generator


def gaussian_latents(seeds: torch.Tensor, dim: int) -> torch.Tensor:
    """`z ~ N(0, I)` of size `dim` per pair, each from its own seed: float32 [B, dim] (CPU)."""
    seeds = torch.as_tensor(seeds).reshape(-1)
    if dim <= 0:
        raise ValueError(f"gaussian_latents: dim must be positive, got {dim}")
    rows = [torch.randn(dim, generator=generator_for(int(s))) for s in seeds.tolist()]
    if not rows:
        return torch.empty(0, dim)
    return torch.stack(rows)
