"""Background stylizers B(x): a licence-clean classical toon filter, AnimeGANv2, the identity.

`ClassicalToonStylizer` is the "keeps the input's colours" stylizer of docs/method.md §1.5
(edge-preserving smoothing, colour quantisation around the input's own colours, dark edges),
after Winnemoeller, Olsen & Gooch, "Real-time video abstraction" (SIGGRAPH 2006), in torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from portrait_toon.checkpoints import (
    extract_state_dict,
    load_into,
    load_state_dict_file,
    resolve_weight,
)
from portrait_toon.nets.animegan import Generator as AnimeGANGenerator
from portrait_toon.synthesis.color import lab_to_rgb, masked_lab_stats, rgb_to_lab

__all__ = [
    "AnimeGANStylizer",
    "ClassicalToonStylizer",
    "IdentityStylizer",
    "bilateral_filter",
    "soft_quantize",
]


def bilateral_filter(
    lab: torch.Tensor, radius: int, sigma_space: float, sigma_color: float
) -> torch.Tensor:
    """One joint bilateral pass over all channels (colour distance = Euclidean in Lab).

    A loop over the (2r+1)^2 offsets of shifted views: no unfold, so memory stays at a few
    image-sized buffers whatever the radius; reflect padding at the border.
    """
    if radius <= 0:
        return lab
    height, width = lab.shape[-2:]
    radius = min(radius, height - 1, width - 1)
    padded = F.pad(lab, (radius, radius, radius, radius), mode="reflect")
    inv_color = -0.5 / sigma_color**2
    inv_space = -0.5 / sigma_space**2
    acc = torch.zeros_like(lab)
    weight_sum = torch.zeros_like(lab[:, :1])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[
                ..., radius + dy : radius + dy + height, radius + dx : radius + dx + width
            ]
            log_w = ((shifted - lab) ** 2).sum(dim=1, keepdim=True) * inv_color
            weight = torch.exp(log_w + (dy * dy + dx * dx) * inv_space)
            acc.addcmul_(weight, shifted)
            weight_sum += weight
    return acc / weight_sum


def soft_quantize(
    values: torch.Tensor, step: float, sharpness: float, offset: float = 0.0
) -> torch.Tensor:
    """Winnemoeller's soft quantisation to levels `offset + k * step`.

    Each value moves towards the centre of its bin; across a bin boundary the output follows a
    tanh ramp of slope `sharpness` (per input unit), so smooth gradients give soft bands
    instead of aliased steps. Large `sharpness` -> hard rounding. `step <= 0` disables it.
    """
    if step <= 0:
        return values
    # Boundaries sit half a step from the levels; the nearest boundary anchors the tanh ramp.
    boundary = torch.round((values - offset - step / 2) / step) * step + offset + step / 2
    return boundary + (step / 2) * torch.tanh(sharpness * (values - boundary))


def _gaussian(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3.0 * sigma))
    radius = min(radius, (min(images.shape[-2:]) - 1) // 2)
    if radius <= 0:
        return images
    kernel = 2 * radius + 1
    return kornia.filters.gaussian_blur2d(images, (kernel, kernel), (sigma, sigma), "replicate")


class ClassicalToonStylizer(nn.Module):
    """Edge-preserving smoothing + colour quantisation + dark edges, colours kept.

    Works in CIELAB: `iterations` bilateral passes (spatial `sigma_space` px, colour
    `sigma_color` Lab units), soft quantisation of L into bins of `luminance_step` Lab units
    and of a/b into bins of `chroma_step` (levels centred on grey, so neutral stays neutral;
    both are quantised around the input's own values, no palette), then XDoG edges on the
    smoothed luminance darken L by up to `edge_strength`. Spatial sizes are pixels at
    `reference_resolution` (short side) when set, else absolute. Input/output [-1, 1]
    [B, 3, H, W], any device; no learnable parameters.
    """

    def __init__(
        self,
        iterations: int = 2,
        radius: int = 2,
        sigma_space: float = 2.0,
        sigma_color: float = 10.0,
        luminance_step: float = 10.0,
        luminance_sharpness: float = 1.0,
        chroma_step: float = 6.0,
        chroma_sharpness: float = 2.0,
        edge_sigma: float = 1.0,
        edge_k: float = 1.6,
        edge_tau: float = 0.98,
        edge_epsilon: float = 0.0,
        edge_sharpness: float = 0.5,
        edge_strength: float = 0.7,
        reference_resolution: int | None = None,
    ) -> None:
        super().__init__()
        if iterations < 0 or radius < 0:
            raise ValueError(
                f"ClassicalToonStylizer: iterations and radius must be >= 0, "
                f"got iterations={iterations}, radius={radius}"
            )
        if sigma_space <= 0 or sigma_color <= 0:
            raise ValueError("ClassicalToonStylizer: sigma_space and sigma_color must be > 0")
        if not 0.0 <= edge_strength <= 1.0:
            raise ValueError(
                f"ClassicalToonStylizer: edge_strength must be in [0, 1], got {edge_strength}"
            )
        self.iterations = iterations
        self.radius = radius
        self.sigma_space = sigma_space
        self.sigma_color = sigma_color
        self.luminance_step = luminance_step
        self.luminance_sharpness = luminance_sharpness
        self.chroma_step = chroma_step
        self.chroma_sharpness = chroma_sharpness
        self.edge_sigma = edge_sigma
        self.edge_k = edge_k
        self.edge_tau = edge_tau
        self.edge_epsilon = edge_epsilon
        self.edge_sharpness = edge_sharpness
        self.edge_strength = edge_strength
        self.reference_resolution = reference_resolution

    def _px(self, value: float, images: torch.Tensor) -> float:
        if self.reference_resolution is None:
            return value
        return value * min(images.shape[-2:]) / self.reference_resolution

    def edges(self, luminance: torch.Tensor) -> torch.Tensor:
        """XDoG line map in [0, 1] (1 = no line) from L in [0, 100], [B, 1, H, W]."""
        sigma = self._px(self.edge_sigma, luminance)
        lum = luminance / 100.0
        dog = _gaussian(lum, sigma) - self.edge_tau * _gaussian(lum, sigma * self.edge_k)
        # Lines where the DoG response dips below epsilon (the dark side of an edge);
        # sharpness is per percent of L so the default does not depend on the L scale.
        response = 1.0 + torch.tanh(self.edge_sharpness * 100.0 * (dog - self.edge_epsilon))
        return torch.where(dog >= self.edge_epsilon, torch.ones_like(dog), response)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ClassicalToonStylizer expects [B, 3, H, W], got {tuple(images.shape)}"
            )
        lab = rgb_to_lab(images)
        radius = max(0, round(self._px(self.radius, images)))
        sigma_space = self._px(self.sigma_space, images)
        for _ in range(self.iterations):
            lab = bilateral_filter(lab, radius, sigma_space, self.sigma_color)
        luminance = soft_quantize(
            lab[:, :1], self.luminance_step, self.luminance_sharpness, self.luminance_step / 2
        )
        chroma = soft_quantize(lab[:, 1:], self.chroma_step, self.chroma_sharpness, 0.0)
        if self.edge_strength > 0:
            line = self.edges(lab[:, :1])
            luminance = luminance * (1.0 - self.edge_strength * (1.0 - line))
        toon = torch.cat([luminance.clamp(0.0, 100.0), chroma], dim=1)
        return lab_to_rgb(toon)

    def extra_repr(self) -> str:
        return (
            f"iterations={self.iterations}, radius={self.radius}, "
            f"luminance_step={self.luminance_step}, chroma_step={self.chroma_step}, "
            f"edge_strength={self.edge_strength}"
        )


class IdentityStylizer(nn.Module):
    """B(x) = x: the background stays the photo (ablation, or when no stylizer is wanted)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


class AnimeGANStylizer(nn.Module):
    """AnimeGANv2 generator as B(x), from a public bryandlee/animegan2-pytorch weight file.

    `weights_dir/filename` is a bare state_dict (`face_paint_512_v2.pt`, `paprika.pt`, ...;
    non-commercial weights, fetched by `make weights`). `keep_colors` in [0, 1] pulls each
    output's global Lab mean back towards its input's (1 = the input's mean exactly): the
    method wants a background stylizer that keeps the input's colours, and some styles shift
    them. `channels_last` runs the net in that memory layout. Input/output [-1, 1]
    [B, 3, H, W], any size; frozen, eval mode.
    """

    def __init__(
        self,
        weights_dir: str | Path,
        filename: str = "face_paint_512_v2.pt",
        align_corners: bool = True,
        keep_colors: float = 0.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= keep_colors <= 1.0:
            raise ValueError(f"AnimeGANStylizer: keep_colors must be in [0, 1], got {keep_colors}")
        path = resolve_weight(weights_dir, filename)
        self.net = AnimeGANGenerator()
        state = extract_state_dict(load_state_dict_file(path))
        load_into(self.net, state, source=path, expected="AnimeGANv2 generator (bryandlee layout)")
        self.net.eval().requires_grad_(False)
        # channels_last is the faster layout for this net's convs on CPU (benchmarks/nets.py).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.filename = filename
        self.align_corners = align_corners
        self.keep_colors = float(keep_colors)

    def train(self, mode: bool = True) -> AnimeGANStylizer:
        """A frozen pretrained stylizer: always in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        out = self.net(images, align_corners=self.align_corners).clamp(-1.0, 1.0)
        out = out.contiguous()
        if self.keep_colors <= 0:
            return out
        lab_out = rgb_to_lab(out)
        everywhere = torch.ones_like(images[:, :1])
        mean_in, _, _ = masked_lab_stats(rgb_to_lab(images), everywhere)
        mean_out, _, _ = masked_lab_stats(lab_out, everywhere)
        shift = (self.keep_colors * (mean_in - mean_out))[:, :, None, None]
        shifted = lab_out + shift
        return lab_to_rgb(torch.cat([shifted[:, :1].clamp(0.0, 100.0), shifted[:, 1:]], dim=1))

    def extra_repr(self) -> str:
        return f"filename={self.filename!r}, keep_colors={self.keep_colors}"
