"""Light fully convolutional U-Net for the stylization network F (any size and aspect ratio).

The input is reflect-padded to a multiple of `pad_multiple` and the output cropped back, so any
H x W works. Cheap on CPU by design: a lossless pixel-unshuffle stem runs the whole network at
half resolution, skips are added (not concatenated), upsampling is bilinear resize + conv (no
transposed convs, no checkerboards), and the output predicts a change to the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("none", "group", "instance")
UPSAMPLE_MODES = ("bilinear", "nearest")
_SQRT_HALF = 0.5**0.5


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        # Up to 32 groups of >= 4 channels: stable with batch size 1, colour kept per group.
        groups = max(1, min(32, channels // 4))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"UNet norm={kind!r} is not one of {NORMS}")


class ResBlock(nn.Module):
    """conv3x3 -> norm -> LeakyReLU -> conv3x3 -> norm, scaled by a learned gain and added to
    the input.

    The gain starts at zero (SkipInit, De & Smith 2020), so every block starts as the identity
    and its contribution grows at the optimiser's pace: deep stacks train stably without
    normalisation, which would otherwise wash out absolute colour. (Zero-initialising the whole
    second conv instead lets Adam grow all its weights at once: unstable without norm.)
    """

    def __init__(self, channels: int, norm: str = "none") -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm1 = _norm(norm, channels)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, channels)
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return x + self.gain * self.norm2(self.conv2(h))


class Down(nn.Module):
    """Stride-2 conv3x3 to the next level's width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Up(nn.Module):
    """1x1 conv to the finer level's width at the coarse resolution (cheap), then a 2x resize.

    Resize + conv instead of a transposed conv: no checkerboard artefacts on flat cartoon areas.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"UNet upsample={mode!r} is not one of {UPSAMPLE_MODES}")
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.mode = mode

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.proj(x)
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")


def _clamp_straight_through(y: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] in the forward pass, identity gradient in the backward pass.

    A residual output must stay a valid image, but a hard clamp (or a tanh around the sum)
    stops gradients exactly where photos saturate (white walls, black hair), and the net then
    drifts there unchecked; the straight-through gradient keeps pulling those pixels back.
    """
    return y + (y.clamp(-1.0, 1.0) - y).detach()


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W up to `multiple`, split evenly; reflect where the image is big enough."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0)
    top, left = pad_h // 2, pad_w // 2
    pads = (left, pad_w - left, top, pad_h - top)
    # Reflect needs each pad smaller than the side; tiny images fall back to edge replication.
    mode = (
        "reflect"
        if max(pads[0], pads[1]) < width and max(pads[2], pads[3]) < height
        else "replicate"
    )
    return F.pad(x, pads, mode=mode), (top, left)


class UNet(nn.Module):
    """Fully convolutional U-Net: `forward(x [B,C,H,W] in [-1,1]) -> [B,out,H,W] in [-1,1]`.

    Args:
        in_channels, out_channels: image channels.
        base_channels: width of the finest level.
        depth: number of levels (resolutions); must equal len(channel_mult).
        channel_mult: width of level i is base_channels * channel_mult[i].
        blocks_per_level: ResBlocks per level in the encoder and again in the decoder.
        bottleneck_blocks: extra ResBlocks at the coarsest level (cheap: few pixels there).
        norm: "none" (default: fastest, keeps absolute colour), "group" or "instance".
        stem_stride: 2 packs each 2x2 pixel patch into channels (pixel-unshuffle, lossless) so
            the network runs at half resolution and unpacks at the end; 1 keeps full resolution.
        residual: predict a change to the input, y = clamp(x + delta, -1, 1) with a
            straight-through gradient (needs in_channels == out_channels); starts as the
            identity, since targets share the inputs' colours and layout. Otherwise
            y = tanh(head(h)).
        upsample: "bilinear" or "nearest" resize before the decoder convs.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 32,
        depth: int = 5,
        channel_mult: Sequence[int] = (1, 2, 4, 8, 8),
        blocks_per_level: int = 1,
        bottleneck_blocks: int = 2,
        norm: str = "none",
        stem_stride: int = 2,
        residual: bool = True,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        if depth != len(channel_mult):
            raise ValueError(
                f"UNet depth={depth} must equal len(channel_mult)={len(channel_mult)} "
                f"(channel_mult={channel_mult}); set both, e.g. depth=4 channel_mult=[1,2,4,8]"
            )
        if depth < 1 or base_channels < 1 or blocks_per_level < 0 or bottleneck_blocks < 0:
            raise ValueError("UNet needs depth >= 1, base_channels >= 1 and block counts >= 0")
        if stem_stride not in (1, 2):
            raise ValueError(f"UNet stem_stride={stem_stride} must be 1 or 2")
        if norm not in NORMS:
            raise ValueError(f"UNet norm={norm!r} is not one of {NORMS}")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"UNet residual=True needs in_channels == out_channels "
                f"(got {in_channels} -> {out_channels}); set residual=false"
            )
        self.config = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_channels": base_channels,
            "depth": depth,
            "channel_mult": list(channel_mult),
            "blocks_per_level": blocks_per_level,
            "bottleneck_blocks": bottleneck_blocks,
            "norm": norm,
            "stem_stride": stem_stride,
            "residual": residual,
            "upsample": upsample,
        }
        self.stem_stride = stem_stride
        self.residual = residual
        self.pad_multiple = stem_stride * 2 ** (depth - 1)
        widths = [base_channels * m for m in channel_mult]

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels * stem_stride**2, widths[0], 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.encoder = nn.ModuleList(
            nn.Sequential(*(ResBlock(w, norm) for _ in range(blocks_per_level))) for w in widths
        )
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth - 1))
        self.bottleneck = nn.Sequential(
            *(ResBlock(widths[-1], norm) for _ in range(bottleneck_blocks))
        )
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], upsample) for i in range(depth - 1))
        self.decoder = nn.ModuleList(
            nn.Sequential(*(ResBlock(widths[i], norm) for _ in range(blocks_per_level)))
            for i in range(depth - 1)
        )
        self.head = nn.Conv2d(widths[0], out_channels * stem_stride**2, 3, padding=1)
        self._init_weights()
        if residual:
            # Start as the identity map: the first steps refine rather than relearn the photo.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _init_weights(self) -> None:
        # He init for the LeakyReLU that follows most convs, so activations keep their scale
        # through the depth (PyTorch's default init shrinks them by ~sqrt(3) per layer).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for up in self.ups:  # no activation after the projection: unit gain
            nn.init.kaiming_normal_(up.proj.weight, nonlinearity="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects [B,C,H,W], got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        padded, (top, left) = _pad_to_multiple(x, self.pad_multiple)

        h = padded
        if self.stem_stride > 1:
            h = F.pixel_unshuffle(h, self.stem_stride)
        h = self.stem(h)
        skips = []
        for level, blocks in enumerate(self.encoder):
            h = blocks(h)
            if level < len(self.downs):
                skips.append(h)
                h = self.downs[level](h)
        h = self.bottleneck(h)
        for level in reversed(range(len(self.ups))):
            skip = skips[level]
            # Scaled sum keeps the activation variance of the two branches (unnormalised net).
            h = (self.ups[level](h, skip.shape[-2:]) + skip) * _SQRT_HALF
            h = self.decoder[level](h)
        delta = self.head(h)
        if self.stem_stride > 1:
            delta = F.pixel_shuffle(delta, self.stem_stride)
        delta = delta[..., top : top + height, left : left + width]
        if self.residual:
            return _clamp_straight_through(x + delta)
        return torch.tanh(delta)
