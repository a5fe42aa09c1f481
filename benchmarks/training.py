"""Training and inference speed of the stylization network F; prints JSON.

Train step (CPU, batch 8 by default) at 128 and 256 px: the on-the-fly synthesis of a batch
(embedded world + classical background stylizer) and F/D's work split into L1 only, + the
shift-tolerant LPIPS (at its `max_size`), + the GAN (G's adversarial term and D's step), in
channels_last as training runs (plus the L1 step in the contiguous layout, and without the
colour look-up table, for comparison); total ms per step, pairs/s and the synthesis share.
Inference: ms per image, GFLOP and % of the same-run conv peak for F (default U-Net with its
colour look-up table) and for the AnimeGANv2 architecture at 256/512/1024,
each in its faster memory format, and their time ratio (docs/design.md §5: F <= 0.5x AnimeGANv2
at 512^2).

Usage: python benchmarks/training.py [--sizes 128,256] [--batch 8] [--infer-sizes 256,512,1024]
       [--runs 3] [--perceptual-max-size 128] [--skip-train] [--skip-infer]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import bench_forward, emit, measure_peaks, peak_rss_mib, setup, time_median

from portrait_toon.nets.animegan import Generator
from portrait_toon.nets.patchgan import MultiScalePatchGAN
from portrait_toon.nets.unet import UNet
from portrait_toon.training.losses import StylizerLoss

# conf/model/stylizer_unet.yaml: the default F carries a 33^3 colour look-up table
COLOR_LUT = 33


def build_synthesizer(resolution: int) -> tuple[torch.nn.Module | None, str]:
    """The embedded-world PairSynthesizer, or None with the reason it is unavailable."""
    try:
        from portrait_toon.synthesis.background import ClassicalToonStylizer
        from portrait_toon.synthesis.pipeline import PairSynthesizer
        from portrait_toon.synthesis.procedural import (
            ProceduralGenerator,
            ProceduralMixer,
            ProceduralSegmenter,
        )
    except ImportError as error:
        return None, f"synthesis not measured: {error}"
    synthesizer = PairSynthesizer(
        ProceduralGenerator(resolution),
        ProceduralMixer(),
        ProceduralSegmenter(),
        ClassicalToonStylizer(reference_resolution=256),
        resolution=resolution,
        base_seed=0,
    )
    return synthesizer.eval(), "embedded world + classical background stylizer"


class TrainStep:
    """One StylizerModule step without Lightning: G forward/backward/Adam, optional D step."""

    def __init__(
        self,
        perceptual: bool,
        gan: bool,
        max_size: int | None,
        channels_last: bool = True,
        color_lut: int = COLOR_LUT,
    ) -> None:
        torch.manual_seed(0)
        self.net = UNet(color_lut=color_lut)
        self.discriminator = MultiScalePatchGAN() if gan else None
        # what StylizerModule(channels_last=True) does
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for network in (self.net, self.discriminator):
            if network is not None:
                network.to(memory_format=self.memory_format)
        loss = {
            "l1": 1.0,
            "perceptual": {"kind": "stlpips" if perceptual else "none", "max_size": max_size},
            "adv": {"kind": "hinge" if gan else "none", "weight": 0.1, "warmup_steps": 0},
        }
        self.loss = StylizerLoss(loss)
        self.opt_g = torch.optim.Adam(self.net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = (
            torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
            if gan
            else None
        )

    def __call__(self, src: torch.Tensor, tgt: torch.Tensor) -> None:
        src = src.contiguous(memory_format=self.memory_format)
        tgt = tgt.contiguous(memory_format=self.memory_format)
        output = self.net(src)
        logits = None
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            logits = self.discriminator(output)
        total, _ = self.loss.generator_losses(output, tgt, step=0, fake_logits=logits)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt_g.step()
        if self.discriminator is not None:
            self.discriminator.requires_grad_(True)
            d_loss = self.loss.discriminator_loss(
                self.discriminator(tgt), self.discriminator(output.detach())
            )
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), 1.0)
            self.opt_d.step()


def bench_train(size: int, batch: int, runs: int, max_size: int | None) -> dict:
    synthesizer, note = build_synthesizer(size)
    result: dict = {"size": size, "batch": batch, "synthesis": note}
    if synthesizer is not None:
        counter = iter(range(10**6))

        def synthesize() -> dict[str, torch.Tensor]:
            start = next(counter) * batch
            return synthesizer(torch.arange(start, start + batch))

        pairs = synthesize()
        result["synthesis_ms"] = 1e3 * time_median(synthesize, runs=runs)
        src, tgt = pairs["src"], pairs["tgt"]
    else:
        src = torch.rand(batch, 3, size, size) * 2 - 1
        tgt = (0.8 * src.flip(1)).clamp(-1, 1)
    variants = {
        "l1": TrainStep(perceptual=False, gan=False, max_size=None),
        # the same step in the contiguous (NCHW) layout: what channels_last saves
        "l1_contiguous": TrainStep(perceptual=False, gan=False, max_size=None, channels_last=False),
        # without the colour look-up table: what the table costs
        "l1_no_color_lut": TrainStep(perceptual=False, gan=False, max_size=None, color_lut=0),
        "l1_stlpips": TrainStep(perceptual=True, gan=False, max_size=max_size),
        "l1_stlpips_gan": TrainStep(perceptual=True, gan=True, max_size=max_size),
        "l1_gan": TrainStep(perceptual=False, gan=True, max_size=None),
    }
    for name, step in variants.items():
        result[f"step_ms_{name}"] = 1e3 * time_median(lambda s=step: s(src, tgt), runs=runs)
    synthesis_ms = result.get("synthesis_ms", 0.0)
    for name in variants:
        total = synthesis_ms + result[f"step_ms_{name}"]
        result[f"total_ms_{name}"] = total
        result[f"pairs_per_s_{name}"] = 1e3 * batch / total
        result[f"synthesis_share_{name}"] = synthesis_ms / total
    result["perceptual_max_size"] = max_size
    return result


def bench_inference(sizes: list[int], runs: int, conv_peak: float) -> dict:
    nets: dict[str, Callable[[], torch.nn.Module]] = {
        "F_unet": lambda: UNet(color_lut=COLOR_LUT),
        "animeganv2": Generator,
    }
    result: dict = {}
    for size in sizes:
        row = {}
        for name, build in nets.items():
            best = None
            for layout in ("contiguous", "channels_last"):
                torch.manual_seed(0)
                net = build().eval()
                x = torch.rand(1, 3, size, size) * 2 - 1
                if layout == "channels_last":
                    net = net.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                figures = bench_forward(name, lambda n=net, i=x: n(i), conv_peak, runs=runs)
                figures["layout"] = layout
                row[f"{name}_{layout}"] = figures
                if best is None or figures["ms"] < best["ms"]:
                    best = figures
            row[name] = best
        row["ratio_F_to_animegan"] = row["F_unet"]["ms"] / row["animeganv2"]["ms"]
        result[str(size)] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--infer-sizes", default="256,512,1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--perceptual-max-size", type=int, default=128)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-infer", action="store_true")
    args = parser.parse_args()
    setup()
    peaks = measure_peaks()
    result: dict = {"benchmark": "training", "peaks": peaks}
    if not args.skip_train:
        result["train"] = [
            bench_train(int(size), args.batch, args.runs, args.perceptual_max_size)
            for size in args.sizes.split(",")
        ]
    if not args.skip_infer:
        with torch.inference_mode():
            result["inference"] = bench_inference(
                [int(s) for s in args.infer_sizes.split(",")], args.runs, peaks["conv_gflops"]
            )
    result["peaks_after"] = measure_peaks()
    result["peak_rss_mib"] = peak_rss_mib()
    emit(result)


if __name__ == "__main__":
    main()
