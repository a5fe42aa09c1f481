"""AnimeGANv2 generator (bryandlee/animegan2-pytorch layout): the 2.1 M-parameter photo->anime net.

Written from the architecture description only; parameter names match the public weights
(`face_paint_512_v2.pt`, `paprika.pt`, ...; tests/data/manifests/animegan2_generator.json).
Images are RGB in [-1, 1] in and out (tanh).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvNormLReLU(nn.Sequential):
    """ReflectionPad -> Conv (padding 0) -> GroupNorm(1, C) -> LeakyReLU(0.2).

    A Sequential so the keys are `.1.weight` (conv) and `.2.{weight,bias}` (norm), as upstream.
    `padding` is an int or a (left, right, top, bottom) tuple: the stride-2 layers pad right and
    bottom only.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | tuple[int, int, int, int] = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            nn.ReflectionPad2d(padding),
            nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, groups=groups, bias=bias),
            # GroupNorm with one group = a layer norm over (C, H, W) per sample, per-channel affine.
            nn.GroupNorm(num_groups=1, num_channels=out_ch, eps=1e-5, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
        )


class InvertedResBlock(nn.Module):
    """MobileNetV2-style block: 1x1 expand, 3x3 depthwise (with bias), 1x1 project, GroupNorm.

    No activation after the projection; the residual is added only when in == out channels.
    """

    def __init__(self, in_ch: int, out_ch: int, expansion_ratio: int = 2) -> None:
        super().__init__()
        self.use_residual = in_ch == out_ch
        hidden = int(round(in_ch * expansion_ratio))
        self.layers = nn.Sequential(
            ConvNormLReLU(in_ch, hidden, kernel_size=1, padding=0),
            ConvNormLReLU(hidden, hidden, groups=hidden, bias=True),
            nn.Conv2d(hidden, out_ch, kernel_size=1, bias=False),
            nn.GroupNorm(num_groups=1, num_channels=out_ch, eps=1e-5, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.use_residual else out


class Generator(nn.Module):
    """AnimeGANv2 generator: two stride-2 downsamplings, 4 inverted residual blocks, two
    bilinear upsamplings (each *before* block_d / block_e), a 1x1 conv and tanh.

    `forward(x, align_corners=True)`: with True (the default, what upstream's `face2paint`
    uses) each upsampling resizes to an exact size - the output of block_a, then the input
    size - so the output always has the input's size. With False (upstream `test.py`'s
    default) each upsampling is `scale_factor=2`, align_corners=False, so an input whose
    sides are not multiples of 4 gives a smaller output (97x131 -> 96x128).
    Use `model.to(memory_format=torch.channels_last)` with channels_last inputs on CPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.block_a = nn.Sequential(
            ConvNormLReLU(3, 32, kernel_size=7, padding=3),
            ConvNormLReLU(32, 64, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(64, 64),
        )
        self.block_b = nn.Sequential(
            ConvNormLReLU(64, 128, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(128, 128),
        )
        self.block_c = nn.Sequential(
            ConvNormLReLU(128, 128),
            InvertedResBlock(128, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            ConvNormLReLU(256, 128),
        )
        self.block_d = nn.Sequential(ConvNormLReLU(128, 128), ConvNormLReLU(128, 128))
        self.block_e = nn.Sequential(
            ConvNormLReLU(128, 64),
            ConvNormLReLU(64, 64),
            ConvNormLReLU(64, 32, kernel_size=7, padding=3),
        )
        self.out_layer = nn.Sequential(nn.Conv2d(32, 3, kernel_size=1, bias=False), nn.Tanh())

    def forward(self, x: Tensor, align_corners: bool = True) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"AnimeGANv2 Generator expects [B, 3, H, W], got {tuple(x.shape)}")
        out = self.block_a(x)
        half_size = out.shape[-2:]
        out = self.block_c(self.block_b(out))
        out = self.block_d(_upsample(out, half_size, align_corners))
        out = self.block_e(_upsample(out, x.shape[-2:], align_corners))
        return self.out_layer(out)


def _upsample(x: Tensor, size, align_corners: bool) -> Tensor:
    if align_corners:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
