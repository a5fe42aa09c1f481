"""pair_seed / generator_for / gaussian_latents: deterministic, independent, collision-free."""

from __future__ import annotations

import pytest
import torch

from portrait_toon.synthesis.latents import (
    STREAMS,
    gaussian_latents,
    generator_for,
    pair_seed,
)

MASK64 = (1 << 64) - 1


def _reference_mix(x: int) -> int:
    """splitmix64 finaliser in exact Python integers (the uint64 reference)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def test_int64_wraparound_matches_uint64_reference():
    from portrait_toon.synthesis.latents import _mix64, _to_signed

    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 123456789123456789]
    got = _mix64(torch.tensor([_to_signed(v) for v in values], dtype=torch.int64))
    expected = [_to_signed(_reference_mix(v)) for v in values]
    assert got.tolist() == expected


def test_deterministic_and_shape():
    index = torch.arange(10)
    a = pair_seed(7, index, "latent")
    b = pair_seed(7, index.clone(), "latent")
    assert a.dtype == torch.int64 and a.shape == index.shape
    assert torch.equal(a, b)
    assert bool((a >= 0).all())
    # A single pair's seed does not depend on what else is in the batch.
    assert int(pair_seed(7, torch.tensor([5]), "latent")[0]) == int(a[5])
    assert int(pair_seed(7, 5, "latent")) == int(a[5])


def test_streams_and_base_seeds_differ():
    index = torch.arange(1000)
    seeds = {name: pair_seed(0, index, name) for name in STREAMS}
    for i, first in enumerate(STREAMS):
        for second in STREAMS[i + 1 :]:
            # Independent streams: no value shared at the same index, and almost no overlap.
            assert not bool((seeds[first] == seeds[second]).any())
            assert len(set(seeds[first].tolist()) & set(seeds[second].tolist())) == 0
    assert not bool((pair_seed(0, index, "latent") == pair_seed(1, index, "latent")).any())


def test_streams_statistically_independent():
    index = torch.arange(20000)
    a = (pair_seed(3, index, "latent") % 2**20).double()
    b = (pair_seed(3, index, "crop") % 2**20).double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert abs(float(corr)) < 0.03
    # Uniform low bits: each of 16 buckets holds about 1/16 of the seeds.
    counts = torch.bincount((pair_seed(3, index, "latent") % 16).long(), minlength=16)
    assert int(counts.min()) > 1000 and int(counts.max()) < 1500


def test_no_collisions_in_a_large_range():
    seeds = pair_seed(42, torch.arange(1_000_000), "latent")
    assert torch.unique(seeds).numel() == seeds.numel()


def test_bad_index_and_stream():
    with pytest.raises(TypeError):
        pair_seed(0, torch.tensor([1.5]), "latent")
    with pytest.raises(ValueError):
        pair_seed(0, torch.tensor([1]), "")


def test_generator_and_latents_are_per_pair():
    seeds = pair_seed(0, torch.arange(4), "latent")
    z = gaussian_latents(seeds, 512)
    assert z.shape == (4, 512) and z.dtype == torch.float32
    z_again = gaussian_latents(seeds[2:3], 512)
    assert torch.equal(z[2], z_again[0])
    assert not torch.allclose(z[0], z[1])
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1
    g1, g2 = generator_for(int(seeds[0])), generator_for(seeds[0])
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    with pytest.raises(ValueError):
        generator_for(seeds)
