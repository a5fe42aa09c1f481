"""Throughput of the embedded world (synthesis/world/): ms per batch of 16 scenes (photo,
labels, character, character labels) at 64, 128 and 256 px, and images/s; prints JSON.

The renderer is element-wise and memory-bound, not FLOP-bound, so besides the protocol's
matmul/conv peaks the same run measures the machine's element-wise speed (a fused multiply-add
over 16x3x256x256 floats) and reports each batch time in units of it as well.
Usage: python benchmarks/procedural.py [--batch 16] [--runs 5] [--skip-peaks] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from common import emit, measure_peaks, setup, time_median

from portrait_toon.synthesis.procedural import ProceduralWorld

SIDES = (64, 128, 256)


def elementwise_gbps(runs: int) -> float:
    """GB/s of an out-of-place `a * b + c` over 3 inputs and 1 output of 3.1 M floats."""
    a, b, c = (torch.rand(16, 3, 256, 256) for _ in range(3))
    seconds = time_median(lambda: torch.addcmul(c, a, b), runs=runs)
    return 4 * a.numel() * 4 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-peaks", action="store_true", help="skip the matmul/conv peaks")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (protocol: 2)")
    args = parser.parse_args()
    setup(args.threads)
    result: dict = {"benchmark": "procedural world render", "batch": args.batch}
    if not args.skip_peaks:
        result["peaks"] = measure_peaks(runs=3)
    reference_ms = None
    with torch.inference_mode():
        gbps = elementwise_gbps(args.runs)
        # One fused multiply-add pass over a 16x3x256x256 batch: the element-wise unit.
        reference_ms = 4 * 16 * 3 * 256 * 256 * 4 / gbps / 1e6
        result["elementwise_gbps"] = gbps
        result["reference_pass_ms"] = reference_ms
        seeds = torch.arange(args.batch, dtype=torch.int64)
        rows = []
        for side in SIDES:
            world = ProceduralWorld(resolution=side)
            seconds = time_median(lambda world=world: world.render(seeds), runs=args.runs)
            rows.append(
                {
                    "resolution": side,
                    "ms_per_batch": seconds * 1e3,
                    "images_per_s": args.batch / seconds,
                    "batch_in_reference_passes": seconds * 1e3 / reference_ms,
                }
            )
        result["render"] = rows
    emit(result)


if __name__ == "__main__":
    main()
