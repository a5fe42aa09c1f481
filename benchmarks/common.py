"""Shared measuring tools for the benchmark scripts (docs/design.md §5 protocol).

Every script measures the machine's own peaks in the same process, right before its networks,
and reports its figures as fractions of them: these machines drift too much for absolute times.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def setup(threads: int = 2) -> None:
    """Fixed thread count and no autograd bookkeeping, as the protocol asks."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def time_median(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_peaks(runs: int = 5) -> dict[str, float]:
    """The machine's fp32 peaks now: a 4096^3 matmul and a 3x3 conv 256->256 on 8x256x64x64
    in channels_last, both in GFLOP/s."""
    with torch.inference_mode():
        a = torch.randn(4096, 4096)
        b = torch.randn(4096, 4096)
        t_mm = time_median(lambda: a @ b, runs=runs)
        x = torch.randn(8, 256, 64, 64).to(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3).to(memory_format=torch.channels_last)
        t_conv = time_median(lambda: F.conv2d(x, w, padding=1), runs=runs)
    mm_flops = 2 * 4096**3
    conv_flops = 2 * 8 * 256 * 64 * 64 * 256 * 9
    return {
        "matmul_gflops": mm_flops / t_mm / 1e9,
        "conv_gflops": conv_flops / t_conv / 1e9,
    }


def bench_forward(
    name: str, fn: Callable[[], object], conv_peak_gflops: float, runs: int = 5
) -> dict[str, float | str]:
    """ms per call, GFLOP per call, achieved GFLOP/s and % of the same-run conv peak."""
    with torch.inference_mode():
        flops = count_flops(fn)
        seconds = time_median(fn, runs=runs)
    gflops = flops / seconds / 1e9
    return {
        "name": name,
        "gflop": flops / 1e9,
        "ms": seconds * 1e3,
        "gflops": gflops,
        "pct_conv_peak": 100.0 * gflops / conv_peak_gflops,
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict) -> None:
    """Print the result as one JSON document (what `make bench` collects)."""
    result.setdefault("torch", torch.__version__)
    result.setdefault("threads", torch.get_num_threads())
    result.setdefault("cpu_count", os.cpu_count())
    print(json.dumps(result, indent=2, sort_keys=False))
