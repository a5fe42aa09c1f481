"""Throughput of the on-the-fly pair factory (PairSynthesizer), stage by stage; prints JSON.

ms per batch for each synthesis stage and for a whole `forward`, and pairs/s, at each
resolution (default: batch 16 at 128 and 256 px, the embedded world's procedural parts and the
classical background stylizer). Absolute times drift on these shared machines, so the same-run
conv/matmul peaks are reported alongside (docs/design.md §5 protocol).

Adding a stage: write a `(name, callable)` into `stage_cases` (the callables get the inputs of
one prepared batch), or a new parts builder in `PARTS` for other generators/mixers/parsers.
Usage: python benchmarks/synthesis.py [--sizes 128,256] [--batch 16] [--runs 5] [--parts procedural]
       [--device cpu|cuda] [--bg classical|identity|animegan] [--render-size auto|full|N]
       [--train-step [--reuse 1,4]]

The real architectures (section "real networks" below): `--parts stylegan2` builds the FFHQ
config-f StyleGAN2 (1024 px, resized to each size), a CDSM mixer over a second generator, the
face-parsing BiSeNet at 512 px and (with `--bg animegan`) AnimeGANv2, all RANDOMLY INITIALISED
(no weight files are read; the cost does not depend on the values). `--gen-size`/`--gen-arch`
shrink the generators (`--gen-arch tiny` = the debug=tiny sizes). `--train-step` adds the time of
one training step of F (default U-Net + PatchGAN, L1 + shift-tolerant LPIPS + hinge GAN) on the
synthesized batch and the ratio synthesis / train step (docs/design.md §5: <= 0.3); `--reuse 1,4`
adds the ratio per training step when each synthesized batch serves k steps (data.reuse=k).
`--render-size full` renders the whole 1024 px image (default auto: up to the working size).
  python benchmarks/synthesis.py --parts stylegan2 --bg animegan --sizes 256,512 --batch 2 \
      --runs 2 --train-step
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import count_flops, emit, measure_peaks, peak_rss_mib, setup, time_median

from portrait_toon.synthesis.background import ClassicalToonStylizer, IdentityStylizer
from portrait_toon.synthesis.latents import pair_seed
from portrait_toon.synthesis.pipeline import PairSynthesizer


def random_animegan() -> torch.nn.Module:
    """AnimeGANv2 (bg_stylizer=animegan) with random weights: no file is read."""
    import tempfile

    from portrait_toon.synthesis.sources import AnimeGANBackground

    with tempfile.TemporaryDirectory() as empty:
        return AnimeGANBackground(empty, allow_random_init=True)


BG_STYLIZERS: dict[str, Callable[[], torch.nn.Module]] = {
    "classical": lambda: ClassicalToonStylizer(reference_resolution=256),
    "identity": IdentityStylizer,
    "animegan": random_animegan,
}


def procedural_parts(resolution: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    from portrait_toon.synthesis.procedural import (
        ProceduralGenerator,
        ProceduralMixer,
        ProceduralSegmenter,
    )

    return ProceduralGenerator(resolution), ProceduralMixer(), ProceduralSegmenter()


# ---- real networks (generator=stylegan2, mixer=cdsm, segmenter=bisenet), random weights ----
GEN_ARCHS: dict[str, dict[str, int]] = {
    "ffhq": {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "channel_max": 512},
    "tiny": {"style_dim": 32, "n_mlp": 2, "channel_multiplier": 2, "channel_max": 16},
}
REAL_OPTIONS: dict[str, object] = {
    "gen_size": 1024,
    "gen_arch": "ffhq",
    "parse_size": 512,
    "render_size": "auto",
}
REUSE: list[int] = [1]  # data.reuse values the amortised ratio is reported for


def stylegan2_parts(resolution: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """G_s (StyleGAN2), CDSM over a second random generator (G_t) and the BiSeNet parser, all
    randomly initialised at the real (or `--gen-arch tiny`) sizes."""
    from portrait_toon.synthesis.mixers import CDSMMixer
    from portrait_toon.synthesis.segmenters import BiSeNetSegmenter
    from portrait_toon.synthesis.sources import StyleGAN2Generator

    arch = {"size": int(REAL_OPTIONS["gen_size"]), **GEN_ARCHS[str(REAL_OPTIONS["gen_arch"])]}
    render_size = REAL_OPTIONS["render_size"]
    generator = StyleGAN2Generator(
        None,
        arch=arch,
        resolution=resolution,
        render_size=None if render_size == "full" else render_size,
        allow_random_init=True,
        latent_avg_samples=256,
    )
    mixer = CDSMMixer(
        generator, None, character_code=None, allow_latent_avg_code=True, allow_random_init=True
    )
    segmenter = BiSeNetSegmenter(
        None, parse_size=int(REAL_OPTIONS["parse_size"]), allow_random_init=True
    )
    return generator, mixer, segmenter


# name -> builder of (generator, mixer, segmenter) at a resolution
PARTS: dict[str, Callable[[int], tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]]] = {
    "procedural": procedural_parts,
    "stylegan2": stylegan2_parts,
}


def train_step(pairs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One training step of F on these pairs, as a callable: the default model (U-Net F,
    multi-scale PatchGAN D) and loss (L1 + shift-tolerant LPIPS at 256 px + hinge GAN, after
    warm-up): G forward/backward/Adam, then D's step (StylizerModule's order, no Lightning)."""
    from portrait_toon.nets.patchgan import MultiScalePatchGAN
    from portrait_toon.nets.unet import UNet
    from portrait_toon.training.losses import StylizerLoss

    torch.manual_seed(0)
    device = pairs["src"].device
    net, disc = UNet().to(device), MultiScalePatchGAN().to(device)
    loss = StylizerLoss(
        {"perceptual": {"kind": "stlpips", "max_size": 256}, "adv": {"warmup_steps": 0}}
    ).to(device)
    opt_g = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    src, tgt = pairs["src"], pairs["tgt"]

    def step() -> None:
        output = net(src)
        disc.requires_grad_(False)
        total, _ = loss.generator_losses(output, tgt, step=1, fake_logits=disc(output))
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        disc.requires_grad_(True)
        d_loss = loss.discriminator_loss(disc(tgt), disc(output.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        synchronize(device)

    return step


def synthesis_vs_train_step(
    synthesize: Callable[[], dict[str, torch.Tensor]], runs: int, batch: int
) -> dict[str, float]:
    """Synthesis of a batch against one train step on it: FLOPs (machine-independent) and
    median times with the two measured in alternation (so load drift hits both alike)."""
    with torch.no_grad():
        pairs = synthesize()
    step = train_step(pairs)
    step()  # warm-up (allocations, Adam state)
    with torch.no_grad():
        synthesis_flops = count_flops(synthesize)
    step_flops = count_flops(step)
    synthesis_times, step_times = [], []
    for _ in range(runs):
        with torch.inference_mode():
            synthesis_times.append(time_median(synthesize, runs=1, warmup=0))
        step_times.append(time_median(step, runs=1, warmup=0))
    synthesis_ms = 1e3 * statistics.median(synthesis_times)
    step_ms = 1e3 * statistics.median(step_times)
    amortised = {
        f"time_ratio with data.reuse={k} (synthesis / k / train step)": round(
            synthesis_ms / k / step_ms, 3
        )
        for k in REUSE
        if k > 1
    }
    return {
        **amortised,
        "synthesis_gflop_per_pair": round(synthesis_flops / batch / 1e9, 2),
        "train_step_gflop_per_pair (F+D, L1+stlpips+hinge, fwd+bwd)": round(
            step_flops / batch / 1e9, 2
        ),
        "flop_ratio synthesis / train step": round(synthesis_flops / step_flops, 3),
        "synthesis_ms (alternating)": round(synthesis_ms, 1),
        "train_step_ms (alternating)": round(step_ms, 1),
        "time_ratio synthesis / train step": round(synthesis_ms / step_ms, 3),
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
    raw_photo, latents = synth.generator.sample(seeds)
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
        "segmenter.parse (photo)": lambda: synth.segmenter.parse(raw_photo, latents),
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
    parts: str,
    bg: str,
    resolution: int,
    batch: int,
    runs: int,
    device: torch.device,
    train_step: bool = False,
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
    result: dict[str, object] = {
        "resolution": resolution,
        "batch": batch,
        "stages_ms": stages,
        "stages_pairs_per_s": {k: round(batch / (v / 1e3), 2) for k, v in stages.items() if v},
        "total_ms (forward, default config)": round(total_ms, 2),
        "pairs_per_s": round(batch / (total_ms / 1e3), 2),
        "ms_per_pair": round(total_ms / batch, 3),
    }
    if train_step:
        result["vs_train_step"] = synthesis_vs_train_step(
            lambda: synth(index, landscapes=landscapes), runs, batch
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parts", default="procedural", choices=sorted(PARTS))
    parser.add_argument("--bg", default="classical", choices=sorted(BG_STYLIZERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-peaks", action="store_true")
    parser.add_argument("--gen-size", type=int, default=1024, help="--parts stylegan2: G size")
    parser.add_argument("--gen-arch", default="ffhq", choices=sorted(GEN_ARCHS))
    parser.add_argument("--parse-size", type=int, default=512, help="--parts stylegan2: BiSeNet")
    parser.add_argument(
        "--render-size",
        default="auto",
        help="--parts stylegan2: generator.render_size (auto | full | a power of two)",
    )
    parser.add_argument("--train-step", action="store_true", help="also time F's train step")
    parser.add_argument(
        "--reuse", default="1", help="with --train-step: data.reuse values to amortise over"
    )
    args = parser.parse_args()
    render_size = args.render_size
    if render_size not in ("auto", "full"):
        render_size = int(render_size)
    REAL_OPTIONS.update(
        gen_size=args.gen_size,
        gen_arch=args.gen_arch,
        parse_size=args.parse_size,
        render_size=render_size,
    )
    REUSE[:] = [int(k) for k in args.reuse.split(",")]
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
    if args.parts == "stylegan2":
        result["weights"] = "random init (real architectures, no files read)"
        result["real_options"] = dict(REAL_OPTIONS)
    result["results"] = [
        bench_resolution(
            args.parts, args.bg, int(size), args.batch, args.runs, device, args.train_step
        )
        for size in args.sizes.split(",")
    ]
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    emit(result)


if __name__ == "__main__":
    main()
