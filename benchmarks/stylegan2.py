"""Forward throughput of the StyleGAN2 generator (256 px batch 4, 1024 px batch 1) and
discriminator (256 px batch 4, channels_last) as % of the same-run conv peak; prints JSON.

Weights are the modules' own random init (N(0, 1) raw weights; scale hardly matters for speed).
With --reference, the same networks also run with the readable reference modulated conv
(upstream's formulation: per-sample weights, grouped conv, single-channel upfirdn2d) for a
same-run speed-up figure. FLOPs are counted on the fast path as executed (FlopCounterMode).
Usage: python benchmarks/stylegan2.py [--reference] [--runs N]
"""

from __future__ import annotations

import argparse

import torch
from common import bench_forward, emit, measure_peaks, peak_rss_mib, setup

from portrait_toon.nets.stylegan2 import Discriminator, Generator

TARGETS_PCT = {"G256_b4": 65.0, "G1024_b1": 50.0, "D256_b4_channels_last": 60.0}
UPSTREAM_PCT = {"G256_b4": 32.0, "G1024_b1": 19.0, "D256_b4_channels_last": 33.0}


def generator_case(size: int, batch: int, impl: str = "auto"):
    torch.manual_seed(0)
    g = Generator(size).eval()
    g.set_modconv_impl(impl)
    z = torch.randn(batch, g.style_dim)
    return lambda: g([z], randomize_noise=False)


def discriminator_case(size: int, batch: int):
    torch.manual_seed(0)
    d = Discriminator(size).eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    return lambda: d(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also time the reference path")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per network (median)")
    args = parser.parse_args()

    setup()
    peaks = measure_peaks()
    conv_peak = peaks["conv_gflops"]
    cases = {
        "G256_b4": lambda impl="auto": generator_case(256, 4, impl),
        "G1024_b1": lambda impl="auto": generator_case(1024, 1, impl),
        "D256_b4_channels_last": lambda impl="auto": discriminator_case(256, 4),
    }
    results = []
    for name, build in cases.items():
        row = bench_forward(name, build(), conv_peak, runs=args.runs)
        row["target_pct_conv_peak"] = TARGETS_PCT[name]
        row["upstream_pct_conv_peak"] = UPSTREAM_PCT[name]
        row["meets_target"] = row["pct_conv_peak"] >= TARGETS_PCT[name]
        if args.reference and name.startswith("G"):
            ref = bench_forward(f"{name}_reference", build("reference"), conv_peak, runs=3)
            row["reference_ms"] = ref["ms"]
            row["reference_pct_conv_peak"] = ref["pct_conv_peak"]
            row["speedup_vs_reference"] = ref["ms"] / row["ms"]
        results.append(row)
    emit({"benchmark": "stylegan2", "peaks": peaks, "results": results,
          "peak_rss_mib": peak_rss_mib()})  # fmt: skip


if __name__ == "__main__":
    main()
