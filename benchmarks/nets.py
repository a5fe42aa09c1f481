"""Forward throughput of the public-format networks (face-parsing BiSeNet 512², AnimeGANv2 512²,
VGG19 features 256², and StyleGAN2 G/D 256 batch 4 when available) as % of the same-run conv
peak, in contiguous and channels_last layouts; prints JSON (docs/design.md §5 protocol).

Weights are the modules' own random init (speed does not depend on their values). The
headline variant of each network is the one the project runs; the others are for comparison.
Usage: python benchmarks/nets.py [--runs N] [--only bisenet,animegan,vgg19,stylegan2]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from common import bench_forward, emit, measure_peaks, peak_rss_mib, setup

from portrait_toon.nets.animegan import Generator as AnimeGANGenerator
from portrait_toon.nets.bisenet import BiSeNet
from portrait_toon.nets.vgg import vgg19

CL = torch.channels_last
# docs/design.md §5: target and upstream figures, % of the same-run conv peak
TARGETS_PCT = {"bisenet": 70.0, "animegan": 55.0, "vgg19": 85.0, "sg2_g": 65.0, "sg2_d": 60.0}
UPSTREAM_PCT = {"bisenet": 63.0, "animegan": 38.0, "vgg19": 89.0, "sg2_g": 32.0, "sg2_d": 33.0}


def bisenet_cases() -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 512, 512)
    plain = BiSeNet(19).eval()
    folded_cl = BiSeNet(19).eval().fold_bn().to(memory_format=CL)
    plain_cl = BiSeNet(19).eval().to(memory_format=CL)
    x_cl = x.contiguous(memory_format=CL)
    return {
        "channels_last+fold_bn": lambda: folded_cl(x_cl),
        "channels_last": lambda: plain_cl(x_cl),
        "contiguous": lambda: plain(x),
        "parse_only_main_head(channels_last+fold_bn)": lambda: folded_cl.main_logits_lowres(x_cl),
    }


def animegan_cases() -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    fused = AnimeGANGenerator().eval()
    plain = AnimeGANGenerator().eval()
    plain.fused_inference = False
    fused_cl = AnimeGANGenerator().eval().to(memory_format=CL)
    plain_cl = AnimeGANGenerator().eval().to(memory_format=CL)
    plain_cl.fused_inference = False
    x_cl = x.contiguous(memory_format=CL)
    return {
        "channels_last+fused": lambda: fused_cl(x_cl),
        "channels_last(module graph)": lambda: plain_cl(x_cl),
        "contiguous+fused": lambda: fused(x),
        "contiguous(module graph)": lambda: plain(x),
    }


def vgg19_cases() -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    net = vgg19().eval()
    x = torch.randn(1, 3, 256, 256)
    features = net.features
    features_cl = vgg19().eval().features.to(memory_format=CL)
    x_cl = x.contiguous(memory_format=CL)
    return {
        "contiguous": lambda: features(x),
        "channels_last": lambda: features_cl(x_cl),
        "taps_relu1_2..relu5_4(contiguous)": lambda: net.features_at(x, net.default_taps),
    }


def stylegan2_cases() -> dict[str, Callable[[], object]]:
    from portrait_toon.nets.stylegan2 import Discriminator, Generator

    torch.manual_seed(0)
    g = Generator(256).eval()
    z = torch.randn(4, g.style_dim)
    d = Discriminator(256).eval().to(memory_format=CL)
    images = torch.randn(4, 3, 256, 256).contiguous(memory_format=CL)
    return {
        "sg2_g:G256_b4": lambda: g([z], randomize_noise=False),
        "sg2_d:D256_b4_channels_last": lambda: d(images),
    }


NETWORKS = {
    "bisenet": ("face-parsing BiSeNet 512x512 b1", bisenet_cases),
    "animegan": ("AnimeGANv2 generator 512x512 b1", animegan_cases),
    "vgg19": ("VGG19 features 256x256 b1", vgg19_cases),
    "stylegan2": ("StyleGAN2 256 b4 (rosinality layout)", stylegan2_cases),
}


def run_network(key: str, conv_peak: float, runs: int) -> list[dict]:
    title, build = NETWORKS[key]
    rows = []
    for variant, fn in build().items():
        target_key = key
        if key == "stylegan2":
            target_key, variant = variant.split(":", 1)
        with torch.inference_mode():
            row = bench_forward(f"{title} [{variant}]", fn, conv_peak, runs=runs)
        row["network"], row["variant"] = key, variant
        row["target_pct_conv_peak"] = TARGETS_PCT[target_key]
        row["upstream_pct_conv_peak"] = UPSTREAM_PCT[target_key]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (median)")
    parser.add_argument("--only", default=",".join(NETWORKS), help="comma-separated networks")
    args = parser.parse_args()

    setup()
    load_before = os.getloadavg()  # other work on the machine skews every figure
    peaks = measure_peaks()
    results, notes = [], []
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        if key not in NETWORKS:
            raise SystemExit(f"unknown network '{key}'; choose from {', '.join(NETWORKS)}")
        try:
            results.extend(run_network(key, peaks["conv_gflops"], args.runs))
        except ImportError as err:  # another part of the project not there yet
            notes.append(f"{key} skipped: {err}")
    headline = {}
    for row in results:
        if row["network"] in headline and row["network"] != "stylegan2":
            continue  # the first variant of each network is the one the project runs
        name = row["network"] if row["network"] != "stylegan2" else row["variant"]
        headline[name] = {
            "pct_conv_peak": round(row["pct_conv_peak"], 1),
            "target": row["target_pct_conv_peak"],
            "meets_target": row["pct_conv_peak"] >= row["target_pct_conv_peak"],
        }
    emit(
        {
            "benchmark": "nets",
            "peaks": peaks,
            "headline": headline,
            "results": results,
            # the machines drift: a second measurement shows how much during this run
            "peaks_after": measure_peaks(),
            "load_avg_1_5_15_before": load_before,
            "load_avg_1_5_15_after": os.getloadavg(),
            "notes": notes,
            "peak_rss_mib": peak_rss_mib(),
        }
    )


if __name__ == "__main__":
    main()
