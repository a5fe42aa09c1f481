"""Projection of character images into the target generator's W+ (the character code w_c of
docs/method.md §1.2): optimisation of one W+ code (and per-image noise maps) per image.

After the StyleGAN2 paper's projector (Karras et al. 2020, appendix D): start at latent_avg,
Adam with a linear learning-rate ramp-up and cosine ramp-down, Gaussian noise on the latent that
fades out over the first `latent_noise_ramp` of the steps, a perceptual distance plus an L2
term, and the multi-scale autocorrelation penalty on the noise maps (renormalised every step).
w_c is the mean of the per-image W+ codes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portrait_toon.nets.stylegan2 import Generator

log = logging.getLogger(__name__)

__all__ = [
    "ProjectionOptions",
    "ProjectionResult",
    "learning_rate",
    "noise_regularization",
    "project",
]


@dataclass
class ProjectionOptions:
    """Knobs of `project` (conf/character/default.yaml documents them)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 0.1
    lr_rampup: float = 0.05  # fraction of the steps with a linear warm-up
    lr_rampdown: float = 0.25  # fraction of the steps with a cosine ramp-down
    perceptual_weight: float = 1.0
    l2_weight: float = 1.0
    noise_regularize: float = 1e5
    optimize_noise: bool = True
    latent_noise: float = 0.05  # latent noise scale, times the W spread
    latent_noise_ramp: float = 0.75  # fraction of the steps over which that noise fades out
    w_std_samples: int = 10000  # z sampled to measure the W spread
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ProjectionOptions:
        """From a dict; an unknown key is an error naming it."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"projection options: unknown key(s) {unknown}; known: {sorted(known)}"
            )
        options = cls(**values)
        if options.steps < 1 or options.batch_size < 1:
            raise ValueError("projection options: steps and batch_size must be >= 1")
        if options.perceptual_weight < 0 or options.l2_weight < 0:
            raise ValueError("projection options: loss weights must be >= 0")
        return options


@dataclass
class ProjectionResult:
    """Codes and diagnostics of a projection of k images."""

    codes: Tensor  # [k, n_latent, style_dim] per-image W+ codes (CPU)
    w_c: Tensor  # [n_latent, style_dim], their mean
    loss_history: Tensor  # [steps] mean image loss per step (perceptual + L2, first batch)
    initial_losses: Tensor  # [k] image loss at latent_avg (before any step)
    final_losses: Tensor  # [k] image loss of the codes with the optimised noise
    reconstructions: Tensor  # [k, 3, S, S] G_t(code) with the optimised noise maps
    reconstructions_stored_noise: Tensor  # [k, 3, S, S] G_t(code) with G_t's stored noise
    # (what CDSM renders with)


def learning_rate(t: float, base: float, rampup: float, rampdown: float) -> float:
    """lr at progress t in [0, 1]: linear ramp-up over `rampup`, cosine ramp-down over the
    last `rampdown` of the run."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return base * ramp


def noise_regularization(noises: list[Tensor]) -> Tensor:
    """Per image [B]: the sum over noise maps and scales (down to 8 px) of the squared
    autocorrelations at a 1-pixel shift in x and y. Keeps the optimised noise maps from
    carrying image content (maps [B, 1, H, W])."""
    total = noises[0].new_zeros(noises[0].shape[0])
    for noise in noises:
        size = noise.shape[-1]
        while True:
            for dim in (2, 3):
                correlation = (noise * torch.roll(noise, shifts=1, dims=dim)).mean(dim=(1, 2, 3))
                total = total + correlation.square()
            if size <= 8:
                break
            noise = F.avg_pool2d(noise, 2)
            size //= 2
    return total


def _normalize_noise_(noises: list[Tensor]) -> None:
    with torch.no_grad():
        for noise in noises:
            mean = noise.mean(dim=(1, 2, 3), keepdim=True)
            std = noise.std(dim=(1, 2, 3), keepdim=True)
            noise.sub_(mean).div_(std)


def _image_losses(
    images: Tensor, targets: Tensor, perceptual: nn.Module | None, options: ProjectionOptions
) -> Tensor:
    """perceptual_weight * P(images, targets) + l2_weight * MSE, per image [B]."""
    loss = options.l2_weight * (images - targets).square().mean(dim=(1, 2, 3))
    if perceptual is not None and options.perceptual_weight > 0:
        loss = loss + options.perceptual_weight * perceptual(images, targets)
    return loss


@torch.no_grad()
def _w_spread(generator: Generator, samples: int, seed: int, device: torch.device) -> float:
    """sqrt(E ||w - mean w||^2) over `samples` seeded z (the projector's latent noise scale)."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.style_dim, generator=rng).to(device)
    w = generator.get_latent(z)
    return float((w - w.mean(0)).square().sum(1).mean().sqrt())


def _render(generator: Generator, wplus: Tensor, noises: list[Tensor] | None) -> Tensor:
    return generator.synthesis_from_styles(generator.get_styles(wplus), noise=noises)


def project(
    generator: Generator,
    images: Tensor,
    latent_avg: Tensor,
    perceptual: nn.Module | None = None,
    options: ProjectionOptions | None = None,
) -> ProjectionResult:
    """Project `images` ([-1, 1], [k, 3, S, S] at the generator's size) into its W+.

    The generator stays frozen (its parameters get no gradients); only the codes (and the
    noise maps when `optimize_noise`) are optimised, batch by batch. Deterministic for a
    given `options.seed` on a given device.
    """
    options = options or ProjectionOptions()
    if (
        images.ndim != 4
        or images.shape[1] != 3
        or images.shape[-2:]
        != (
            generator.size,
            generator.size,
        )
    ):
        raise ValueError(
            f"project: images must be [k, 3, {generator.size}, {generator.size}] (the "
            f"generator's size), got {list(images.shape)}"
        )
    device = latent_avg.device
    generator.requires_grad_(False).eval()
    if perceptual is not None:
        perceptual.requires_grad_(False).eval()
    w_std = _w_spread(generator, options.w_std_samples, options.seed, device)
    rng = torch.Generator().manual_seed(options.seed)

    codes, history, initial, final, recon, recon_stored = [], None, [], [], [], []
    for start in range(0, images.shape[0], options.batch_size):
        targets = images[start : start + options.batch_size].to(device).float()
        batch = targets.shape[0]
        wplus = latent_avg.detach().reshape(1, 1, -1).repeat(batch, generator.n_latent, 1)
        wplus.requires_grad_(True)
        noises = [
            torch.randn((batch, 1) + tuple(buf.shape[-2:]), generator=rng).to(device)
            for buf in (
                getattr(generator.noises, f"noise_{i}") for i in range(generator.num_layers)
            )
        ]
        for noise in noises:
            noise.requires_grad_(options.optimize_noise)
        params = [wplus] + (noises if options.optimize_noise else [])
        optimizer = torch.optim.Adam(params, lr=options.lr)
        with torch.no_grad():
            initial.append(
                _image_losses(_render(generator, wplus, noises), targets, perceptual, options).cpu()
            )
        steps_loss = []
        for step in range(options.steps):
            t = step / options.steps
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(t, options.lr, options.lr_rampup, options.lr_rampdown)
            fade = max(0.0, 1.0 - t / options.latent_noise_ramp) ** 2
            strength = w_std * options.latent_noise * fade
            jitter = torch.randn(wplus.shape, generator=rng).to(device) * strength
            rendered = _render(generator, wplus + jitter, noises)
            image_loss = _image_losses(rendered, targets, perceptual, options)
            loss = image_loss.sum()
            if options.optimize_noise and options.noise_regularize > 0:
                loss = loss + options.noise_regularize * noise_regularization(noises).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if options.optimize_noise:
                _normalize_noise_(noises)
            steps_loss.append(float(image_loss.detach().mean()))
        if history is None:
            history = torch.tensor(steps_loss)
        with torch.no_grad():
            code = wplus.detach()
            out = _render(generator, code, noises)
            final.append(_image_losses(out, targets, perceptual, options).cpu())
            recon.append(out.clamp(-1, 1).cpu())
            recon_stored.append(_render(generator, code, None).clamp(-1, 1).cpu())
            codes.append(code.cpu())
        log.info(
            "projected images %d-%d: loss %.4f -> %.4f",
            start,
            start + batch - 1,
            float(initial[-1].mean()),
            float(final[-1].mean()),
        )
    all_codes = torch.cat(codes)
    return ProjectionResult(
        codes=all_codes,
        w_c=all_codes.mean(0),
        loss_history=history if history is not None else torch.empty(0),
        initial_losses=torch.cat(initial),
        final_losses=torch.cat(final),
        reconstructions=torch.cat(recon),
        reconstructions_stored_noise=torch.cat(recon_stored),
    )
