"""Small randomised stylizer nets and test images shared by the inference tests."""

from __future__ import annotations

import numpy as np
import torch

from portrait_toon.nets.unet import UNet

TINY_UNET = {
    "base_channels": 8,
    "depth": 3,
    "channel_mult": [1, 2, 4],
    "blocks_per_level": 1,
    "bottleneck_blocks": 1,
}


def tiny_unet(seed: int = 0, **overrides) -> UNet:
    """A small U-Net whose weights are randomised, so it is far from the identity it starts as."""
    torch.manual_seed(seed)
    net = UNet(**{**TINY_UNET, **overrides})
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return net.eval()


def lut_unet() -> UNet:
    """`tiny_unet` with a randomised colour look-up table on its output."""
    return tiny_unet(seed=1, color_lut=9)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: content with structure at every scale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=2) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


class FailingIdentity(torch.nn.Module):
    """The identity (grid of 8 px) that fails the way real runs do: `max_area` px and over
    runs out of memory, inputs `failures` names by padded width raise that exception."""

    pad_multiple = 8

    def __init__(self, max_area: int | None = None, failures: dict | None = None) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.max_area = max_area
        self.failures = failures or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_area is not None and x.shape[-1] * x.shape[-2] > self.max_area:
            raise MemoryError("pretend")
        if x.shape[-1] in self.failures:
            raise self.failures[x.shape[-1]]
        return x * self.scale
