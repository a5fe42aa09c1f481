"""Latency of `Stylizer` (fp32, CPU, 2 threads) with F's default U-Net at 256^2, 512^2 and
1024^2, and at 4K (3840x2160) in one pass, with the default `tile=auto` and in fixed tiles, with
the peak RSS of each 4K run, and the peak RSS of the default run on an 8000x8000 image; prints
JSON. Memory figures are also given as ratios to the one-pass 4K run of the same benchmark.

Each 4K/8K run happens in its own subprocess so its peak RSS is not mixed with the other runs'.
The AnimeGANv2 generator at 512^2 is timed in the same run as the reference docs/design.md §5 uses
(F must take at most half its time). 4K runs use 3 timed runs instead of 5 (one is ~20 s); the
8000x8000 run is timed once.
Usage: python benchmarks/stylize.py [--skip-4k] [--skip-8k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from common import (
    bench_forward,
    count_flops,
    emit,
    measure_peaks,
    peak_rss_mib,
    setup,
    time_median,
)

from portrait_toon.inference.stylizer import Stylizer
from portrait_toon.nets.animegan import Generator as AnimeGANGenerator
from portrait_toon.nets.unet import UNet

SQUARE_SIDES = (256, 512, 1024)
FOUR_K = (2160, 3840)  # H, W
EIGHT_K = (8000, 8000)
FOUR_K_TILES = (None, "auto", 1024, 512)
OVERLAP = 64
FOUR_K_RUNS = 3


def random_image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def process_peak_rss_mib() -> float:
    """Peak RSS of this process image, MiB. Linux's VmHWM restarts at exec, whereas getrusage's
    ru_maxrss of a child starts at its parent's RSS at fork time (it survives the exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def big_child(tile: int | str | None, size: tuple[int, int], runs: int) -> dict:
    """One large-image measurement in this (fresh) process: latency, GFLOP, peak RSS."""
    setup()
    stylizer = Stylizer(UNet().eval(), tile=tile, overlap=OVERLAP)
    image = random_image(*size)
    rss_before = process_peak_rss_mib()
    plan = stylizer.plan(*size)

    def run() -> np.ndarray:
        return stylizer(image)

    seconds = time_median(run, runs=runs, warmup=0 if runs == 1 else 1)
    flops = 0.0
    if runs > 1:
        with torch.inference_mode():
            flops = count_flops(run)
    return {
        "name": f"F Stylizer {size[1]}x{size[0]} tile={tile}",
        "tile": tile,
        "plan": plan.describe(),
        "gflop": flops / 1e9,
        "ms": seconds * 1e3,
        "peak_rss_mib": process_peak_rss_mib(),
        "rss_before_run_mib": rss_before,
        "overlap": OVERLAP,
    }


def run_child(tile: int | str | None, size: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child-tile", str(tile)]
    child = subprocess.run(
        [*command, "--child-size", size], check=True, capture_output=True, text=True
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-4k", action="store_true", help="no 4K runs")
    parser.add_argument("--skip-8k", action="store_true", help="no 8000x8000 run")
    parser.add_argument("--child-tile", help=argparse.SUPPRESS)  # internal: one 4K/8K run
    parser.add_argument("--child-size", default="4k", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_tile is not None:
        tile = args.child_tile
        tile = None if tile == "None" else tile if tile == "auto" else int(tile)
        size, runs = (FOUR_K, FOUR_K_RUNS) if args.child_size == "4k" else (EIGHT_K, 1)
        print(json.dumps(big_child(tile, size, runs)))
        return

    setup()
    peaks = measure_peaks()
    conv_peak = peaks["conv_gflops"]
    net = UNet().eval()
    results = []
    for side in SQUARE_SIDES:
        image = random_image(side, side)
        name = f"F Stylizer {side}x{side}"
        stylizer = Stylizer(net, tile=None)
        results.append(bench_forward(name, lambda image=image, s=stylizer: s(image), conv_peak))
    reference = AnimeGANGenerator().eval()
    x512 = torch.rand(1, 3, 512, 512) * 2 - 1
    animegan = bench_forward("AnimeGANv2 generator 512x512", lambda: reference(x512), conv_peak)
    f512 = next(r for r in results if r["name"].endswith("512x512"))

    four_k = []
    if not args.skip_4k:
        for tile in FOUR_K_TILES:
            measured = run_child(tile, "4k")
            measured["gflops"] = measured["gflop"] / (measured["ms"] / 1e3)
            measured["pct_conv_peak"] = 100.0 * measured["gflops"] / conv_peak
            four_k.append(measured)
        one_pass = four_k[0]["peak_rss_mib"]
        for measured in four_k:
            measured["peak_rss_vs_one_pass"] = measured["peak_rss_mib"] / one_pass
    eight_k = None if args.skip_8k else run_child("auto", "8k")

    emit(
        {
            "benchmark": "stylize",
            "peaks": peaks,
            "f_config": "UNet() defaults",
            "f_params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "results": results,
            "reference_animegan_512": animegan,
            "f_over_animegan_time_512": f512["ms"] / animegan["ms"],
            "four_k": four_k,
            "eight_k_default": eight_k,
        }
    )


if __name__ == "__main__":
    main()
