"""GPU figures of the method's expensive paths; prints JSON (part of `make gpu-check`).

- synthesis: pairs/s of the PairSynthesizer with the real architectures at 512 px (FFHQ
  StyleGAN2 G_s, CDSM over a second StyleGAN2, BiSeNet, AnimeGANv2; random init, batch 8) and
  its per-stage split (benchmarks/synthesis.py's `bench_resolution`), in fp32 as training runs
  it (the data module synthesizes outside the training step's autocast);
- train_step: F's training step at 512 px, batch 8, in bf16 autocast as `trainer.precision:
  bf16-mixed` runs it (benchmarks/training.py's `TrainStep`: U-Net F with its colour table,
  multi-scale PatchGAN D; L1 + shift-tolerant LPIPS at 256 px + hinge GAN; G and D steps);
- inference / inference_compiled: one image's forward at 1024x1024 and 3840x2160 (4K) in fp32
  and bf16 autocast, eager or under `torch.compile`, for F and for the AnimeGANv2 generator
  (the peer), both channels_last in eval mode.
Each figure carries the peak GPU memory of its own work (`torch.cuda.max_memory_allocated`,
reset before it, weights included). Times are medians over `runs` after warm-up, synchronized.

Usage: python benchmarks/gpu_figures.py [--only synthesis,train_step,inference,inference_compiled]
       [--out FILE] [--time-limit S] [--runs N]
`--out` is rewritten after every case, so a run stopped at its time limit keeps what it measured.
Without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (common, synthesis, ...)

FIGURES = ("synthesis", "train_step", "inference", "inference_compiled")
INFER_SIZES = {"1024x1024": (1024, 1024), "4K 3840x2160": (2160, 3840)}
SIZE, BATCH = 512, 8
MIB = 2**20
# tests shrink the sizes above and run the same code on the CPU (no memory figure there)
DEVICE = torch.device("cuda")
# time a case needs left to start (else it is listed as skipped, not overrun into the runner's
# kill): an eager case takes seconds; a compiled one first compiles for its shape and precision
# (tens of seconds, an estimate: no compile has been timed on a GPU here)
MIN_CASE_S = {"eager": 5.0, "compiled": 30.0}


class Recorder:
    """The figures so far, rewritten to `path` after every case; stops cases at `deadline`."""

    def __init__(self, path: Path | None, deadline: float) -> None:
        self.path, self.deadline = path, deadline
        self.data: dict[str, object] = {}

    def put(self, key: str, value: object) -> None:
        self.data[key] = value
        if self.path is not None:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.data, indent=2, default=str), encoding="utf-8")
            temporary.replace(self.path)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float | None:
    """Peak GPU memory allocated since `reset_peak`, MiB (None off CUDA)."""
    if DEVICE.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / MIB, 1)


def empty_cache() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def autocast_bf16():
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)


def measure(fn: Callable[[], object], runs: int, warmup: int = 1) -> dict[str, float]:
    """Median ms of `fn` (synchronized) and the peak GPU memory of its calls, MiB."""
    reset_peak()
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return {
        "ms": round(1e3 * statistics.median(times), 3),
        "peak_mib": peak_mib(),
    }


def figure_synthesis(recorder: Recorder, runs: int) -> None:
    import synthesis as bench_synthesis

    reset_peak()
    result = bench_synthesis.bench_resolution("stylegan2", "animegan", SIZE, BATCH, runs, DEVICE)
    result["peak_mib"] = peak_mib()
    result["weights"] = "random init (real architectures, no files read)"
    result["precision"] = "fp32 (synthesis runs outside the training step's autocast)"
    recorder.put("synthesis", result)


def figure_train_step(recorder: Recorder, runs: int) -> None:
    from training import TrainStep

    device = DEVICE
    step = TrainStep(perceptual=True, gan=True, max_size=256)
    for module in (step.net, step.discriminator, step.loss):
        module.to(device)  # in place: the optimisers keep the same parameters
    generator = torch.Generator().manual_seed(0)
    src = (torch.rand(BATCH, 3, SIZE, SIZE, generator=generator) * 2 - 1).to(device)
    tgt = (torch.rand(BATCH, 3, SIZE, SIZE, generator=generator) * 2 - 1).to(device)

    def train_step() -> None:
        # bf16-mixed: Lightning runs the (manually optimised) training step in this autocast
        with autocast_bf16():
            step(src, tgt)

    figures = measure(train_step, runs, warmup=2)
    recorder.put(
        "train_step",
        {
            "size": SIZE,
            "batch": BATCH,
            "precision": "bf16-mixed (autocast)",
            "loss": "L1 + shift-tolerant LPIPS (max_size 256) + hinge GAN, G and D steps",
            **figures,
            "pairs_per_s": round(1e3 * BATCH / figures["ms"], 2),
        },
    )


def inference_nets() -> dict[str, Callable[[], torch.nn.Module]]:
    from training import COLOR_LUT

    from portrait_toon.nets.animegan import Generator
    from portrait_toon.nets.unet import UNet

    return {"F_unet": lambda: UNet(color_lut=COLOR_LUT), "animeganv2": Generator}


def figure_inference(recorder: Recorder, runs: int, compiled: bool) -> None:
    """fps and peak memory per (net, size, precision); cases past the deadline are listed as
    skipped. Eager cases run in inference_mode; compiled ones under no_grad."""
    key = "inference_compiled" if compiled else "inference"
    min_case_s = MIN_CASE_S["compiled" if compiled else "eager"]
    rows: dict[str, object] = {}
    device = DEVICE
    for net_name, build in inference_nets().items():
        torch.manual_seed(0)
        net = build().eval().to(device, memory_format=torch.channels_last)
        runner = torch.compile(net) if compiled else net
        for size_name, (height, width) in INFER_SIZES.items():
            x = torch.rand(1, 3, height, width, device=device) * 2 - 1
            x = x.contiguous(memory_format=torch.channels_last)
            for precision in ("fp32", "bf16"):
                case = f"{net_name} {size_name} {precision}"
                if recorder.time_left() < min_case_s:
                    rows[case] = {"skipped": "time limit reached"}
                    continue
                autocast = autocast_bf16() if precision == "bf16" else nullcontext()

                def forward(runner=runner, x=x, autocast=autocast) -> None:
                    with autocast:
                        runner(x)

                try:
                    with torch.no_grad() if compiled else torch.inference_mode():
                        started = time.perf_counter()
                        forward()  # compiles when compiled
                        synchronize()
                        first_s = time.perf_counter() - started
                        figures = measure(forward, runs)
                    rows[case] = {
                        **figures,
                        "fps": round(1e3 / figures["ms"], 2),
                        "first_call_s": round(first_s, 2),
                    }
                except Exception as error:  # noqa: BLE001 - one case failing is a figure too
                    rows[case] = {"error": f"{type(error).__name__}: {error}"[:500]}
                recorder.put(key, rows)
        del net, runner
        if compiled:
            torch._dynamo.reset()  # drop the compiled graphs (and the weights they hold)
        empty_cache()
    recorder.put(key, rows)


def run(names: list[str], recorder: Recorder, runs: int) -> bool:
    """Run the named figures; a failure is recorded under `errors` and the others go on."""
    steps: dict[str, Callable[[], None]] = {
        "synthesis": lambda: figure_synthesis(recorder, runs),
        "train_step": lambda: figure_train_step(recorder, runs),
        "inference": lambda: figure_inference(recorder, runs, compiled=False),
        "inference_compiled": lambda: figure_inference(recorder, runs, compiled=True),
    }
    errors: dict[str, str] = {}
    for name in names:
        try:
            steps[name]()
        except Exception:  # noqa: BLE001 - recorded, and the next figure still runs
            errors[name] = traceback.format_exc(limit=8)[-3000:]
            recorder.put("errors", errors)
        empty_cache()
    return not errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(FIGURES), help="comma-separated figures")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds for all cases")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        parser.error(f"--only: unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    if not torch.cuda.is_available():
        print(f"gpu_figures: no CUDA device (torch {torch.__version__}); nothing to measure")
        return 0
    from common import emit, setup

    setup(threads=torch.get_num_threads())
    recorder = Recorder(args.out, time.monotonic() + args.time_limit)
    recorder.put("device", torch.cuda.get_device_name())
    ok = run(names, recorder, args.runs)
    emit({"benchmark": "gpu_figures", **recorder.data})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
