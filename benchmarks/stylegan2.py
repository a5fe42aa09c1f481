"""Forward throughput of the StyleGAN2 generator (256 px batch 4, 1024 px batch 1) and
discriminator (256 px batch 4, channels_last) as % of the same-run conv peak; prints JSON.

Weights are the modules' own random init (N(0, 1) raw weights; scale hardly matters for speed).
FLOPs are counted on the fast path as executed (FlopCounterMode); `early_exit_flops` is the
share of the 1024 px block in the FFHQ config-f generator's FLOPs (what render_size: auto saves).
--reference: also time the readable reference modulated conv (upstream's formulation: per-sample
  weights, grouped conv, single-channel upfirdn2d) for a same-run speed-up figure.
--cpu-time: also measure with 1 thread in process CPU time (min of the runs), peak included; on
  a shared machine this is far steadier than 2-thread wall time, which other jobs distort.
Large activations are fresh allocations whose first touch page-faults (about a third of the
time at 1024 px on these VMs); `THP_MEM_ALLOC_ENABLE=1` in the environment (read by torch at
import) backs them with huge pages. The JSON records whether it was set.
Usage: python benchmarks/stylegan2.py [--reference] [--cpu-time] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import bench_forward, count_flops, emit, measure_peaks, peak_rss_mib, setup

from portrait_toon.nets.stylegan2 import Discriminator, Generator

TARGETS_PCT = {"G256_b4": 65.0, "G1024_b1": 50.0, "D256_b4_channels_last": 60.0}
UPSTREAM_PCT = {"G256_b4": 32.0, "G1024_b1": 19.0, "D256_b4_channels_last": 33.0}


def generator_case(size: int, batch: int, impl: str = "auto") -> Callable[[], object]:
    torch.manual_seed(0)
    g = Generator(size).eval()
    g.set_modconv_impl(impl)
    z = torch.randn(batch, g.style_dim)
    return lambda: g([z], randomize_noise=False)


def discriminator_case(size: int, batch: int) -> Callable[[], object]:
    torch.manual_seed(0)
    d = Discriminator(size).eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    return lambda: d(images)


def early_exit_flops(size: int = 1024, stop: int = 512) -> dict[str, float]:
    """Generator FLOPs of a full render vs one stopped after the `stop` px block
    (synthesis_from_styles(max_resolution=stop), what generator.render_size: auto does)."""
    torch.manual_seed(0)
    g = Generator(size).eval()
    with torch.inference_mode():
        styles = g.get_styles(torch.randn(1, g.style_dim))
        full = count_flops(lambda: g.synthesis_from_styles(styles))
        early = count_flops(lambda: g.synthesis_from_styles(styles, max_resolution=stop))
    return {
        f"G{size}_full_gflop": full / 1e9,
        f"G{size}_to_{stop}_gflop": early / 1e9,
        f"share_of_the_{size}_block": 1.0 - early / full,
    }


def cpu_seconds(fn: Callable[[], object], runs: int) -> float:
    """Least process CPU time of `runs` calls after one warm-up (1 thread: no spin-waiting)."""
    fn()
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def single_thread_cpu_figures(cases: dict, runs: int) -> dict:
    """% of the 1-thread conv peak, both timed in process CPU time."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        x = torch.randn(8, 256, 64, 64).to(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3).to(memory_format=torch.channels_last)
        peak = 2 * 8 * 256 * 64 * 64 * 256 * 9 / cpu_seconds(lambda: F.conv2d(x, w, padding=1), 3)
        out = {"conv_peak_gflops_1thread": peak / 1e9}
        for name, build in cases.items():
            fn = build()
            flops = count_flops(fn)
            seconds = cpu_seconds(fn, runs)
            out[name] = {"cpu_ms": seconds * 1e3, "pct_conv_peak": 100 * flops / seconds / peak}
    torch.set_num_threads(2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also time the reference path")
    parser.add_argument("--cpu-time", action="store_true", help="also 1-thread CPU-time figures")
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
    report = {"benchmark": "stylegan2", "peaks": peaks, "results": results}
    report["early_exit_flops"] = early_exit_flops()
    if args.cpu_time:
        report["single_thread_cpu_time"] = single_thread_cpu_figures(cases, runs=3)
    report["peak_rss_mib"] = peak_rss_mib()
    report["THP_MEM_ALLOC_ENABLE"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "")
    emit(report)


if __name__ == "__main__":
    main()
