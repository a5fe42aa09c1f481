"""CUDA against CPU (marker `gpu`; skipped without CUDA, run by `make gpu-check`).

Each case runs the same network or synthesis stage with the same weights and inputs on the CPU
and on the GPU and compares the two. The CPU paths are themselves checked against the upstream
golden vectors by tests/nets/, so a CUDA result close to the CPU one is close to upstream.
Weights are the golden-fill-v1 weights rebuilt from the key manifests (tests/golden.py), inputs
the golden files' inputs regenerated from their documented seeds (no file is needed).

fp32 comparisons run with TF32 off (cuDNN/cuBLAS would otherwise round convolutions to a 10-bit
mantissa, a deliberate speed trade rather than a bug); bf16 autocast is compared with its own,
looser tolerance. Errors are relative to the CPU result's largest magnitude.

The cases of one area run in one test function (few skipped tests on a CPU machine); a failure
lists every case that failed. With PORTRAIT_TOON_GPU_STATS=<file> each case's error figures are
appended there as JSON lines (what `make gpu-check` reports).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from golden import fill_state_dict

pytestmark = pytest.mark.gpu

MANIFESTS = Path(__file__).resolve().parents[1] / "data" / "manifests"
FP32 = {"max": 1e-3, "mean": 1e-4}  # relative to the CPU result's largest magnitude
BF16 = {"max": 0.1, "mean": 0.01}
PAIRS = {"mean": 2e-3, "outliers": 0.01}  # synthesis: mean |diff|, share of pixels off by > 0.05


def cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@contextmanager
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Cases:
    """Runs named cases, keeps going after a failure, and reports every failure at the end."""

    def __init__(self, area: str) -> None:
        self.area = area
        self.failures: list[str] = []
        self.stats: list[dict] = []

    def run(self, name: str, case: Callable[[], None]) -> None:
        self.current = name
        try:
            case()
        except Exception as error:  # noqa: BLE001 - every case is reported, not just the first
            self.failures.append(f"{name}: {type(error).__name__}: {error}")

    def close(self, name: str, cpu: torch.Tensor, gpu: torch.Tensor, tol: dict[str, float]) -> None:
        """`gpu` within `tol` of `cpu` (max and mean |diff| relative to max |cpu|)."""
        label = f"{self.current}/{name}"
        expected, actual = cpu.detach().float().cpu(), gpu.detach().float().cpu()
        if expected.shape != actual.shape:
            self.failures.append(f"{label}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}")
            return
        if not bool(torch.isfinite(actual).all()):
            self.failures.append(f"{label}: non-finite values on CUDA")
            return
        scale = float(expected.abs().max().clamp_min(1e-12))
        diff = (actual - expected).abs()
        figures = {"max_rel": float(diff.max()) / scale, "mean_rel": float(diff.mean()) / scale}
        self.stats.append({"case": label, **figures})
        if figures["max_rel"] > tol["max"] or figures["mean_rel"] > tol["mean"]:
            self.failures.append(f"{label}: {figures} exceeds {tol}")

    def pairs(self, name: str, cpu: torch.Tensor, gpu: torch.Tensor) -> None:
        """Images/masks of a synthesized pair: rendering may flip a few boundary pixels."""
        label = f"{self.current}/{name}"
        expected, actual = cpu.detach().float().cpu(), gpu.detach().float().cpu()
        if expected.shape != actual.shape:
            self.failures.append(f"{label}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}")
            return
        diff = (actual - expected).abs()
        figures = {
            "mean_abs": float(diff.mean()),
            "outlier_share": float((diff > 0.05).float().mean()),
            "max_abs": float(diff.max()),
        }
        self.stats.append({"case": label, **figures})
        if figures["mean_abs"] > PAIRS["mean"] or figures["outlier_share"] > PAIRS["outliers"]:
            self.failures.append(f"{label}: {figures} exceeds {PAIRS}")

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(f"{self.current}: {message}")

    def finish(self) -> None:
        stats_file = os.environ.get("PORTRAIT_TOON_GPU_STATS")
        if stats_file:
            with open(stats_file, "a", encoding="utf-8") as handle:
                for row in self.stats:
                    handle.write(json.dumps({"area": self.area, **row}) + "\n")
        assert not self.failures, f"{len(self.failures)} CUDA case(s) failed:\n" + "\n".join(
            self.failures
        )


def seeded(shape: tuple[int, ...], seed: int, uniform: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if uniform:
        return torch.rand(shape, generator=generator) * 2 - 1
    return torch.randn(shape, generator=generator)


def on_both(net: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    return net.eval(), copy.deepcopy(net).to(cuda()).eval()


# ---------------------------------------------------------------------------------- networks
def test_networks_on_cuda_match_cpu():
    """StyleGAN2, BiSeNet, AnimeGANv2, VGG16 / ST-LPIPS and F (fp32 and bf16 autocast, forward
    and backward), and stylize's tiled path, on CUDA vs CPU."""
    from portrait_toon.nets.animegan import Generator as AnimeGAN
    from portrait_toon.nets.bisenet import BiSeNet
    from portrait_toon.nets.stylegan2 import Generator as StyleGAN2
    from portrait_toon.nets.vgg import vgg16

    cases = Cases("networks")
    device = cuda()

    def stylegan2() -> None:
        net = StyleGAN2(256, 512, 8, channel_multiplier=2)
        kernel = next(v for k, v in net.state_dict().items() if k.endswith(".kernel"))
        state = fill_state_dict(MANIFESTS / "stylegan2_rosinality_g_256.json", "R", kernel=kernel)
        net.load_state_dict(state, strict=True)
        cpu_net, gpu_net = on_both(net)
        z = seeded((2, 512), 1234)  # golden in.z_a
        with torch.no_grad(), no_tf32():
            cpu_img, cpu_w = cpu_net([z], randomize_noise=False, return_latents=True)
            gpu_img, gpu_w = gpu_net([z.to(device)], randomize_noise=False, return_latents=True)
        cases.close("latents", cpu_w, gpu_w, FP32)
        cases.close("image", cpu_img, gpu_img, FP32)

    def bisenet() -> None:
        net = BiSeNet(19)
        net.load_state_dict(
            fill_state_dict(MANIFESTS / "bisenet_faceparsing_19.json", "P", g2=1.0), strict=True
        )
        cpu_net, gpu_net = on_both(net)
        x = seeded((1, 3, 512, 512), 7)  # golden in.x
        with torch.no_grad(), no_tf32():
            cpu_out, gpu_out = cpu_net(x), gpu_net(x.to(device))
        for name, a, b in zip(("feat_out", "feat_out16", "feat_out32"), cpu_out, gpu_out):
            cases.close(name, a, b, FP32)
        agree = (cpu_out[0].argmax(1) == gpu_out[0].argmax(1).cpu()).float().mean()
        cases.check(float(agree) > 0.999, f"parse labels agree on {float(agree):.4%} of pixels")

    def animegan() -> None:
        net = AnimeGAN()
        net.load_state_dict(
            fill_state_dict(MANIFESTS / "animegan2_generator.json", "P", g2=1.0), strict=True
        )
        cpu_net, gpu_net = on_both(net)
        x = seeded((1, 3, 256, 256), 11, uniform=True)  # golden in.sq
        with torch.no_grad(), no_tf32():
            cases.close("module graph", cpu_net(x), gpu_net(x.to(device)), FP32)
            # the fused inference path (channels_last), what stylize and synthesis run
            cpu_net.to(memory_format=torch.channels_last)
            gpu_net.to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            fused = gpu_net(x_cl.to(device))
            cases.close("fused channels_last", cpu_net(x_cl), fused, FP32)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                cases.close("fused bf16 autocast", cpu_net(x_cl), gpu_net(x_cl.to(device)), BF16)

    def vgg() -> None:
        net = vgg16()
        net.load_state_dict(
            fill_state_dict(MANIFESTS / "vgg16_torchvision.json", "P", g2=2.0), strict=True
        )
        cpu_net, gpu_net = on_both(net)
        x = seeded((1, 3, 128, 128), 5)  # golden in.x
        with torch.no_grad(), no_tf32():
            cases.close("features", cpu_net.features(x), gpu_net.features(x.to(device)), FP32)
            cases.close("logits", cpu_net(x), gpu_net(x.to(device)), FP32)

    def stlpips() -> None:
        from portrait_toon.nets.perceptual import ShiftTolerantLPIPS, find_stlpips_weights

        try:
            find_stlpips_weights()
        except FileNotFoundError:
            pretrained = False  # no wheel: same architecture, random weights
        else:
            pretrained = True
        torch.manual_seed(0)
        cpu_net, gpu_net = on_both(ShiftTolerantLPIPS(pretrained=pretrained))
        x, y = seeded((2, 3, 96, 128), 1, uniform=True), seeded((2, 3, 96, 128), 2, uniform=True)
        with torch.no_grad(), no_tf32():
            cases.close("distance", cpu_net(x, y), gpu_net(x.to(device), y.to(device)), FP32)

    def f_net() -> None:
        _check_f(cases, device)

    def stylize() -> None:
        _check_stylize(cases, device)

    for name, case in (
        ("stylegan2", stylegan2),
        ("bisenet", bisenet),
        ("animeganv2", animegan),
        ("vgg16", vgg),
        ("stlpips", stlpips),
        ("F", f_net),
        ("stylize", stylize),
    ):
        cases.run(name, case)
    cases.finish()


def _random_f() -> torch.nn.Module:
    """F as configured by default (conf/model/stylizer_unet.yaml), with a non-zero head and a
    perturbed colour table (at init F is the identity, which would hide every error)."""
    from portrait_toon.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(color_lut=33)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.startswith("head") or name.startswith("color_lut"):
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return net.to(memory_format=torch.channels_last)


def _check_f(cases: Cases, device: torch.device) -> None:
    """F's forward in eval (fp32, bf16 autocast) and a training forward/backward (batch-norm
    batch statistics) whose gradients must point the same way on both devices."""
    cpu_net, gpu_net = on_both(_random_f())
    x = seeded((2, 3, 96, 160), 3, uniform=True).contiguous(memory_format=torch.channels_last)
    x_gpu = x.to(device)
    with torch.no_grad():
        with no_tf32():
            reference = cpu_net(x)
            cases.close("eval fp32", reference, gpu_net(x_gpu), FP32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = gpu_net(x_gpu)
        cases.close("eval bf16 autocast", reference, out, BF16)

    grads = {}
    for label, net, inputs, precision in (
        ("cpu", cpu_net, x, "fp32"),
        ("gpu", gpu_net, x_gpu, "fp32"),
        ("gpu_bf16", gpu_net, x_gpu, "bf16"),
    ):
        net.train().zero_grad(set_to_none=True)
        context = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else no_tf32()
        with context:
            loss = (net(inputs) - inputs.flip(-1)).abs().mean()
            loss.backward()
        grads[label] = torch.cat([p.grad.float().cpu().flatten() for p in net.parameters()])
        cases.check(bool(torch.isfinite(grads[label]).all()), f"{label}: non-finite gradients")
    cases.close("train gradients fp32", grads["cpu"], grads["gpu"], {"max": 1e-2, "mean": 1e-3})
    cosine = torch.nn.functional.cosine_similarity(grads["cpu"], grads["gpu_bf16"], dim=0)
    cases.check(float(cosine) > 0.95, f"bf16 gradients: cosine {float(cosine):.4f} to fp32's")


def _check_stylize(cases: Cases, device: torch.device) -> None:
    """The Stylizer API on CUDA against the CPU: a uint8 photo in tiles (fp32), a float batch
    in one pass in bf16 autocast, and tile="auto" (its memory plan from the GPU's free memory)."""
    from portrait_toon import Stylizer

    cpu_net, gpu_net = on_both(_random_f())
    on_cpu = Stylizer(cpu_net, device="cpu", tile=128, overlap=32)
    on_gpu = Stylizer(gpu_net, device=device, tile=128, overlap=32)
    photo = ((seeded((200, 264, 3), 4, uniform=True) + 1) * 127.5).round().to(torch.uint8).numpy()
    with no_tf32():
        reference, tiled = on_cpu(photo), on_gpu(photo)
    cases.pairs("uint8 tiled fp32", torch.from_numpy(reference) / 127.5 - 1,
                torch.from_numpy(tiled) / 127.5 - 1)  # fmt: skip
    batch = seeded((2, 3, 96, 128), 5, uniform=True)
    with no_tf32():
        expected = on_cpu(batch, tile=None)
    bf16 = Stylizer(gpu_net, device=device, tile=None, precision="bf16")
    out = bf16(batch.to(device))
    cases.check(out.device.type == "cuda", f"output on {out.device}")
    cases.close("float batch bf16", expected, out, BF16)
    with no_tf32():
        auto = on_gpu(batch.to(device), tile="auto")
    cases.close("float batch tile=auto fp32", expected, auto, FP32)


# --------------------------------------------------------------------------------- synthesis
def _synthesizers(overrides: list[str], tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from portrait_toon import config
    from portrait_toon.tasks.synthesize import build_synthesizer

    cfg = config.compose_config(
        "train", ["debug=tiny", f"paths.weights_dir={tmp_path / 'weights'}", *overrides], tmp_path
    )
    config.apply_set_if_present(cfg)
    synthesizer = build_synthesizer(cfg, base_seed=0)
    return synthesizer, copy.deepcopy(synthesizer).to(cuda())


def test_synthesis_on_cuda_matches_cpu(tmp_path):
    """PairSynthesizer pair i on CUDA vs CPU (embedded world; tiny real networks), with its
    stages: the composite, colour reflection, CutFace (forced on every pair) and the crop."""
    cases = Cases("synthesis")
    index = torch.arange(6, dtype=torch.int64)

    def compare(overrides: list[str], cutface_every_pair: bool) -> Callable[[], None]:
        def case() -> None:
            cpu_synth, gpu_synth = _synthesizers(overrides, tmp_path)
            with no_tf32():
                cpu = cpu_synth(index, return_stages=True)
                gpu = gpu_synth(index.to(cuda()), return_stages=True)
            for key in ("src", "tgt", "head_mask", "skin_mask", "composite", "corrected"):
                cases.check(gpu[key].device.type == "cuda", f"{key} is on {gpu[key].device}")
                cases.pairs(key, cpu[key], gpu[key])
            cases.check(
                torch.equal(cpu["is_cutface"], gpu["is_cutface"].cpu()), "CutFace choice differs"
            )
            if cutface_every_pair:
                cases.check(bool(gpu["is_cutface"].all()), "CutFace did not run on every pair")

        return case

    cases.run("embedded world", compare(["resolution=64"], False))
    cases.run(
        "embedded world, CutFace every pair",
        compare(["resolution=64", "augmentation.cutface.p=1.0"], True),
    )
    cases.run(
        "real networks (tiny, random init)",
        compare(["experiment=webtoonme_512", "augmentation.cutface.p=1.0"], True),
    )
    cases.finish()
