"""AnimeGANv2 generator (bryandlee/animegan2-pytorch layout): the 2.1 M-parameter photo->anime net.

Written from the architecture description only; parameter names match the public weights
(`face_paint_512_v2.pt`, `paprika.pt`, ...; tests/data/manifests/animegan2_generator.json).
Images are RGB in [-1, 1] in and out (tanh).
"""

from __future__ import annotations

import torch
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

    For channels_last inputs without autograd (no_grad/inference_mode, or nothing requiring
    grad) the forward runs a fused path (`fused_inference=True`): each layer's GroupNorm
    statistics, affine, LeakyReLU and the *next* layer's reflection padding become one write
    into a pre-padded buffer, which saves a full-size allocation and a memory pass per layer
    (channels_last GroupNorm is also slow on CPU). Same numbers up to float rounding; set
    `fused_inference = False` to run the plain module graph.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fused_inference = True
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
        fusable = _format_of(x) is torch.channels_last  # NCHW: the native GroupNorm is faster
        if self.fused_inference and fusable and not self._needs_autograd(x):
            return self._forward_fused(x, align_corners)
        out = self.block_a(x)
        half_size = out.shape[-2:]
        out = self.block_c(self.block_b(out))
        out = self.block_d(_upsample(out, half_size, align_corners))
        out = self.block_e(_upsample(out, x.shape[-2:], align_corners))
        return self.out_layer(out)

    def _needs_autograd(self, x: Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def _forward_fused(self, x: Tensor, align_corners: bool) -> Tensor:
        """The same graph with norm + activation + next padding fused (see the class doc)."""
        a, b, c, d, e = self.block_a, self.block_b, self.block_c, self.block_d, self.block_e
        out = _pad_reflect(x, _pad_of(a[0]))
        out = _cnl_fused(a[0], out, _pad_of(a[1]))
        out = _cnl_fused(a[1], out, _pad_of(a[2]))
        left, right, top, bottom = _pad_of(b[0])
        out = _cnl_fused(a[2], out, (left, right, top, bottom))
        half_size = (out.shape[-2] - top - bottom, out.shape[-1] - left - right)
        out = _cnl_fused(b[0], out, _pad_of(b[1]))
        out = _cnl_fused(b[1], out, _pad_of(c[0]))
        out = _cnl_fused(c[0], out, (0, 0, 0, 0))
        for block in c[1:5]:
            out = _inverted_res_fused(block, out)
        out = _cnl_fused(c[5], _pad_reflect(out, _pad_of(c[5])), (0, 0, 0, 0))
        out = _pad_reflect(_upsample(out, half_size, align_corners), _pad_of(d[0]))
        out = _cnl_fused(d[0], out, _pad_of(d[1]))
        out = _cnl_fused(d[1], out, (0, 0, 0, 0))
        out = _pad_reflect(_upsample(out, x.shape[-2:], align_corners), _pad_of(e[0]))
        out = _cnl_fused(e[0], out, _pad_of(e[1]))
        out = _cnl_fused(e[1], out, _pad_of(e[2]))
        out = _cnl_fused(e[2], out, (0, 0, 0, 0))
        return torch.tanh_(self.out_layer[0](out))


Pad = tuple[int, int, int, int]  # (left, right, top, bottom), as nn.ReflectionPad2d


def _pad_of(layer: ConvNormLReLU) -> Pad:
    return tuple(layer[0].padding)  # type: ignore[return-value]


def _pad_reflect(x: Tensor, pad: Pad) -> Tensor:
    return F.pad(x, pad, mode="reflect") if any(pad) else x


def _group_norm1_lrelu_into(
    y: Tensor, norm: nn.GroupNorm, pad: Pad, activate: bool = True
) -> Tensor:
    """GroupNorm(1, C) (+ LeakyReLU 0.2) of `y`, written into a buffer with `pad` reflected.

    `y` must be a fresh temporary: with no padding the result overwrites it (one full-size
    allocation fewer, and fresh memory is expensive to touch).
    """
    batch, channels, height, width = y.shape
    mean, var = _per_sample_mean_var(y)
    rstd = torch.rsqrt(var + norm.eps)
    scale = norm.weight.view(1, channels, 1, 1) * rstd.view(batch, 1, 1, 1)
    shift = norm.bias.view(1, channels, 1, 1) - mean.view(batch, 1, 1, 1) * scale
    left, right, top, bottom = pad
    if not any(pad):
        torch.addcmul(shift, y, scale, out=y)
        return F.leaky_relu_(y, 0.2) if activate else y
    out = torch.empty(
        (batch, channels, height + top + bottom, width + left + right),
        dtype=y.dtype,
        device=y.device,
        memory_format=_format_of(y),
    )
    inner = out[:, :, top : top + height, left : left + width]
    torch.addcmul(shift, y, scale, out=inner)
    if activate:
        F.leaky_relu_(inner, 0.2)
    _reflect_borders(out, pad, height, width)
    return out


def _per_sample_mean_var(y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population variance over (C, H, W) of each sample, `[B]` each.

    The memory is split into equal contiguous chunks (one per channel in NCHW, one per row in
    NHWC) whose statistics the batch-norm kernel computes in parallel, two-pass and without a
    temporary; the law of total variance combines them exactly. `var_mean` is several times
    slower on CPU, and BLAS dot products lose ~1e-3 relative over 16 M terms.
    """
    batch, channels, height, width = y.shape
    if _format_of(y) is torch.channels_last:
        chunks = y.permute(0, 2, 3, 1).reshape(1, batch * height, width * channels)
    else:
        chunks = y.reshape(1, batch * channels, height * width)
    chunk_mean, chunk_var = torch.batch_norm_update_stats(chunks, None, None, 0.0)
    chunk_mean = chunk_mean.view(batch, -1)
    mean = chunk_mean.mean(dim=1)
    var = chunk_var.view(batch, -1).mean(dim=1) + chunk_mean.var(dim=1, unbiased=False)
    return mean, var


def _cnl_fused(layer: ConvNormLReLU, x_padded: Tensor, next_pad: Pad) -> Tensor:
    conv, norm = layer[1], layer[2]
    y = F.conv2d(x_padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    return _group_norm1_lrelu_into(y, norm, next_pad)


def _inverted_res_fused(block: InvertedResBlock, x: Tensor) -> Tensor:
    expand, depthwise, project, norm = block.layers
    hidden = _cnl_fused(expand, x, _pad_of(depthwise))
    hidden = _cnl_fused(depthwise, hidden, (0, 0, 0, 0))
    out = _group_norm1_lrelu_into(project(hidden), norm, (0, 0, 0, 0), activate=False)
    return out.add_(x) if block.use_residual else out


def _reflect_borders(buf: Tensor, pad: Pad, height: int, width: int) -> None:
    """Fill the border of `buf` by reflecting its interior (as F.pad mode='reflect')."""
    left, right, top, bottom = pad
    cols = slice(left, left + width)
    if top:
        buf[:, :, :top, cols] = buf[:, :, top + 1 : 2 * top + 1, cols].flip(2)
    if bottom:
        last = top + height - 1
        buf[:, :, last + 1 :, cols] = buf[:, :, last - bottom : last, cols].flip(2)
    if left:  # columns after rows, over the full height, so the corners come out right
        buf[:, :, :, :left] = buf[:, :, :, left + 1 : 2 * left + 1].flip(3)
    if right:
        last = left + width - 1
        buf[:, :, :, last + 1 :] = buf[:, :, :, last - right : last].flip(3)


def _format_of(t: Tensor) -> torch.memory_format:
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _upsample(x: Tensor, size, align_corners: bool) -> Tensor:
    if align_corners:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
