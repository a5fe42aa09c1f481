"""Throughput of the on-the-fly pair factory (PairSynthesizer), stage by stage; prints JSON.

ms per batch for each synthesis stage and for a whole `forward`, and pairs/s, at each
resolution (default: batch 16 at 128 and 256 px, the embedded world's procedural parts and the
classical background stylizer). Absolute times drift on these shared machines, so the same-run
conv/matmul peaks are reported alongside (BENCHMARKS.md protocol).

Adding a stage: write a `(name, callable)` into `stage_cases` (the callables get the inputs of
one prepared batch), or a new parts builder in `PARTS` for other generators/mixers/parsers.
Usage: python benchmarks/synthesis.py [--sizes 128,256] [--batch 16] [--runs 5] [--parts procedural]
       [--device cpu|cuda] [--bg classical|identity]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import emit, measure_peaks, peak_rss_mib, setup, time_median

from portrait_toon.synthesis.background import ClassicalToonStylizer, IdentityStylizer
from portrait_toon.synthesis.latents import pair_seed
from portrait_toon.synthesis.pipeline import PairSynthesizer

BG_STYLIZERS: dict[str, Callable[[], torch.nn.Module]] = {
    "classical": lambda: ClassicalToonStylizer(reference_resolution=256),
    "identity": IdentityStylizer,
}


def procedural_parts(resolution: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    from portrait_toon.synthesis.procedural import (
        ProceduralGenerator,
        ProceduralMixer,
        ProceduralSegmenter,
    )

    return ProceduralGenerator(resolution), ProceduralMixer(), ProceduralSegmenter()


# name -> builder of (generator, mixer, segmenter) at a resolution
PARTS: dict[str, Callable[[int], tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]]] = {
    "procedural": procedural_parts,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_cases(
    synth: PairSynthesizer, index: torch.Tensor, landscapes: torch.Tensor
) -> dict[str, Callable[[], object]]:
    """One callable per stage, each fed with the outputs of the stages before it (computed
    once here), so every stage is timed on realistic inputs."""
    seeds = pair_seed(synth.base_seed, index, "latent")
    _, latents = synth.generator.sample(seeds)
    rendered = synth.render(index)
    photo, character, labels = rendered["photo"], rendered["character"], rendered["labels"]
    head, skin = synth.masks(labels)
    background = synth.bg_stylizer(photo)
    composite = character * head + background * (1.0 - head)
    corrected = synth.reflect(composite, photo, character, head, skin, rendered["character_labels"])
    all_cutface = PairSynthesizer(
        synth.generator,
        synth.mixer,
        synth.segmenter,
        synth.bg_stylizer,
        resolution=synth.resolution,
        base_seed=synth.base_seed,
        head_mask=synth.head_mask_options,
        color_reflection=synth.color_options,
        cutface={**synth.cutface_options, "p": 1.0},
        crop=synth.crop_options,
    ).to(synth.device)
    bank = synth.landscape_bank
    size = (synth.resolution, synth.resolution)
    landscape_seeds = pair_seed(synth.base_seed, index, "landscape")
    return {
        "generator.sample": lambda: synth.generator.sample(seeds),
        "mixer.render": lambda: synth.mixer.render(latents),
        "render (sample+render+parse x2+resize)": lambda: synth.render(index),
        "masks (head+skin)": lambda: synth.masks(labels),
        "bg_stylizer(photo)": lambda: synth.bg_stylizer(photo),
        "composite": lambda: character * head + background * (1.0 - head),
        "color_reflection": lambda: synth.reflect(
            composite, photo, character, head, skin, rendered["character_labels"]
        ),
        f"cutface (p={synth.cutface_options['p']})": lambda: synth.cutface(
            index, photo, corrected, head, skin, labels, landscapes
        ),
        "cutface (p=1, every pair)": lambda: all_cutface.cutface(
            index, photo, corrected, head, skin, labels, landscapes
        ),
        "crop/flip": lambda: synth.crop(index, [photo, corrected, head, skin]),
        "landscape_bank (loader side, CPU)": lambda: bank.sample_batch(landscape_seeds, size),
    }


def bench_resolution(
    parts: str, bg: str, resolution: int, batch: int, runs: int, device: torch.device
) -> dict[str, object]:
    generator, mixer, segmenter = PARTS[parts](resolution)
    synth = PairSynthesizer(
        generator, mixer, segmenter, BG_STYLIZERS[bg](), resolution=resolution, base_seed=0
    ).to(device)
    index = torch.arange(batch, dtype=torch.int64)
    landscapes = synth.landscape_bank.sample_batch(
        pair_seed(synth.base_seed, index, "landscape"), (resolution, resolution)
    )

    def timed(fn: Callable[[], object]) -> float:
        def call() -> None:
            fn()
            synchronize(device)

        with torch.inference_mode():
            return time_median(call, runs=runs) * 1e3

    stages = {}
    with torch.inference_mode():
        cases = stage_cases(synth, index, landscapes)
    for name, fn in cases.items():
        stages[name] = round(timed(fn), 2)
    total_ms = timed(lambda: synth(index, landscapes=landscapes))
    return {
        "resolution": resolution,
        "batch": batch,
        "stages_ms": stages,
        "total_ms (forward, default config)": round(total_ms, 2),
        "pairs_per_s": round(batch / (total_ms / 1e3), 2),
        "ms_per_pair": round(total_ms / batch, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parts", default="procedural", choices=sorted(PARTS))
    parser.add_argument("--bg", default="classical", choices=sorted(BG_STYLIZERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-peaks", action="store_true")
    args = parser.parse_args()
    setup()
    device = torch.device(args.device)
    result: dict[str, object] = {
        "benchmark": "synthesis",
        "parts": args.parts,
        "bg_stylizer": args.bg,
        "device": str(device),
    }
    if not args.skip_peaks:
        result["peaks"] = measure_peaks()
    result["results"] = [
        bench_resolution(args.parts, args.bg, int(size), args.batch, args.runs, device)
        for size in args.sizes.split(",")
    ]
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    emit(result)


if __name__ == "__main__":
    main()
