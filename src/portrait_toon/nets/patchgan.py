"""Multi-scale PatchGAN discriminator (pix2pixHD-style) with spectral norm.

Each scale is a PatchGAN that sees the image at 1/2**s resolution and returns a map of logits,
one per overlapping patch; coarse scales judge layout, the finest judges texture and lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


class PatchDiscriminator(nn.Module):
    """PatchGAN: n_layers stride-2 4x4 convs (width doubling, capped at 8x), one stride-1 conv,
    a 1-channel logit conv. Receptive field 70 px for n_layers=3."""

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        n_layers: int = 3,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(cin, cout, 4, stride=stride, padding=1)
            return _spectral_norm(layer) if spectral_norm else layer

        layers: list[nn.Module] = [
            conv(in_channels, base_channels, 2),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for i in range(1, n_layers):
            next_width = base_channels * min(2**i, 8)
            layers += [conv(width, next_width, 2), nn.LeakyReLU(0.2, inplace=True)]
            width = next_width
        next_width = base_channels * min(2**n_layers, 8)
        layers += [conv(width, next_width, 1), nn.LeakyReLU(0.2, inplace=True)]
        layers += [conv(next_width, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MultiScalePatchGAN(nn.Module):
    """`forward(x [B,C,H,W]) -> list` of logit maps `[B,1,h_s,w_s]`, finest scale first.

    Scale s sees x average-pooled s times by 2. Inputs smaller than a scale's receptive field
    still work (the maps just get small); at least 8 px per side at the coarsest scale is
    needed for the stride-2 convs to leave a map.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_scales: int = 2,
        base_channels: int = 64,
        n_layers: int = 3,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if num_scales < 1 or n_layers < 1:
            raise ValueError(
                f"MultiScalePatchGAN needs num_scales >= 1 and n_layers >= 1, "
                f"got {num_scales}, {n_layers}"
            )
        self.in_channels = in_channels
        self.config = {
            "in_channels": in_channels,
            "num_scales": num_scales,
            "base_channels": base_channels,
            "n_layers": n_layers,
            "spectral_norm": spectral_norm,
        }
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, base_channels, n_layers, spectral_norm)
            for _ in range(num_scales)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs
