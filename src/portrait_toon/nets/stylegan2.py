"""StyleGAN2 generator and discriminator in the rosinality/stylegan2-pytorch checkpoint layout.

Written from the StyleGAN2 paper (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020) and the public checkpoint layout; no upstream code. Parameter names, shapes
and buffers match rosinality's `model.py` so `.pt` files (`g_ema`, `g`, `d`) load with
`strict=True`, and the forward math matches upstream's (verified against golden vectors).

Besides the upstream API, the generator exposes style space (the per-layer modulation outputs
s_l = A_l(w_l)) for cross-domain style mixing and layer swapping: `modulated_layers()`,
`latent_index_of_layer`, `get_styles()`, `synthesis_from_styles()`, `layers_at_or_above()`.

Each fast path keeps a readable pure-PyTorch reference next to it (`upfirdn2d_reference`,
`modulated_conv2d_reference`); tests check that the two agree.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)
LEAKY_SLOPE = 0.2
DEMOD_EPS = 1e-8  # Eq. 3's epsilon
PIXELNORM_EPS = 1e-8
STDDEV_EPS = 1e-8

MODCONV_IMPLS = ("auto", "reference", "weight", "activation")


def base_channels(channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Feature maps per resolution (upstream table), each capped at `channel_max`."""
    upstream = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return {res: min(ch, channel_max) for res, ch in upstream.items()}


def _check_size(size: int, what: str) -> int:
    log_size = int(math.log2(size)) if size > 0 else 0
    if size < 8 or size > 1024 or 2**log_size != size:
        raise ValueError(f"{what}: size must be a power of two in 8..1024, got {size}")
    return log_size


def make_blur_kernel(taps: Sequence[float]) -> Tensor:
    """Separable FIR kernel outer(k, k), normalised to sum 1 (e.g. [1,3,3,1] -> /64)."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    return k / k.sum()


# ------------------------------------------------------------------------------------------------
# upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample.
# ------------------------------------------------------------------------------------------------


def _pair(pad: Sequence[int]) -> tuple[int, int, int, int]:
    """(pad0, pad1) for both axes, or (x0, x1, y0, y1) as upstream's upfirdn2d takes it."""
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad[0], pad[1], pad[2], pad[3]
    raise ValueError(f"upfirdn2d: pad must have 2 or 4 entries, got {tuple(pad)}")


def upfirdn2d_reference(
    x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)
) -> Tensor:
    """Readable upfirdn2d: each channel is zero-upsampled by `up` (samples at multiples of
    `up`), padded by (pad0 before, pad1 after; negative crops), correlated with the *flipped*
    kernel (i.e. convolved with it) and decimated by keeping every `down`-th sample."""
    px0, px1, py0, py1 = _pair(pad)
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    y = x.reshape(b * c, 1, h, 1, w, 1)
    y = F.pad(y, (0, up - 1, 0, 0, 0, up - 1))  # zero insertion: x[i] lands at i*up
    y = y.reshape(b * c, 1, h * up, w * up)
    y = F.pad(y, (max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)))
    y = y[:, :, max(-py0, 0) : y.shape[2] - max(-py1, 0), max(-px0, 0) : y.shape[3] - max(-px1, 0)]
    y = F.conv2d(y, torch.flip(kernel, (0, 1)).view(1, 1, kh, kw).to(y))
    y = y[:, :, ::down, ::down]
    return y.reshape(b, c, y.shape[2], y.shape[3])


def upfirdn2d(
    x: Tensor,
    kernel: Tensor,
    up: int = 1,
    down: int = 1,
    pad: Sequence[int] = (0, 0),
    bias: Tensor | None = None,
) -> Tensor:
    """Fast upfirdn2d (same result as `upfirdn2d_reference`, plus an optional per-channel bias).

    One depthwise conv per call instead of reshaping into single-channel images:
    up == 1 -> conv2d with the flipped kernel and stride `down` (only the kept samples are
    computed); down == 1 -> conv_transpose2d with the kernel itself and stride `up`. Any other
    combination falls back to the reference.
    """
    px0, px1, py0, py1 = _pair(pad)
    c = x.shape[1]
    kh, kw = kernel.shape
    kernel = kernel.to(dtype=x.dtype)
    if up == 1:
        weight = torch.flip(kernel, (0, 1)).expand(c, 1, kh, kw)
        if px0 == px1 == py0 == py1 and px0 >= 0:
            return F.conv2d(x, weight, bias, stride=down, padding=px0, groups=c)
        if min(px0, px1, py0, py1) >= 0:
            x = F.pad(x, (px0, px1, py0, py1))
            return F.conv2d(x, weight, bias, stride=down, groups=c)
    elif down == 1:
        # conv_transpose2d(stride=up, padding=q) gives out[o] = sum_i x[i] * k[o + q - up*i];
        # upfirdn gives out[o] = sum_i x[i] * k[o + (k_len - 1 - pad0) - up*i]  =>  q = k-1-pad0,
        # and the output-length difference becomes output_padding (must be in [0, up)).
        qy, qx = kh - 1 - py0, kw - 1 - px0
        opy, opx = py1 - py0 + up - 1, px1 - px0 + up - 1
        if qy == qx >= 0 and 0 <= opy < up and 0 <= opx < up:
            weight = kernel.expand(c, 1, kh, kw)
            return F.conv_transpose2d(
                x, weight, bias, stride=up, padding=qy, output_padding=(opy, opx), groups=c
            )
    out = upfirdn2d_reference(x, kernel, up, down, pad)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------------
# Activations live in channels_last [B, C, H, W] (what the CPU convs run fastest on). Only the
# per-sample-weight form with a batch > 1 regroups them into [1, B*C, H, W] channels_last, i.e.
# memory ordered (H, W, B, C), for one grouped conv (groups = B); a [B, C, H, W] tensor can view
# that memory with strides (C, 1, W*B*C, B*C), so the regrouping costs one copy each way.
# ------------------------------------------------------------------------------------------------


def _to_grouped(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [1, B*C, H, W] channels_last over the same (H, W, B, C) memory."""
    b, c, h, w = x.shape
    return x.permute(2, 3, 0, 1).reshape(h, w, b * c).permute(2, 0, 1).unsqueeze(0)


def _from_grouped(y: Tensor, batch: int) -> Tensor:
    """Inverse of `_to_grouped` (a view when `y` is channels_last)."""
    _, bc, h, w = y.shape
    return y[0].permute(1, 2, 0).reshape(h, w, batch, bc // batch).permute(2, 3, 0, 1)


# ------------------------------------------------------------------------------------------------
# Equalized-learning-rate layers (Karras et al. 2018, "Progressive Growing of GANs", sec. 4.1):
# weights are stored raw, N(0, 1) / lr_mul, and scaled by He's constant at run time.
# ------------------------------------------------------------------------------------------------


def fused_leaky_relu(
    x: Tensor, bias: Tensor | None, negative_slope: float = LEAKY_SLOPE, scale: float = SQRT2
) -> Tensor:
    """Upstream FusedLeakyReLU: leaky_relu(x + bias, 0.2) * sqrt(2), bias per channel (dim 1)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


class PixelNorm(nn.Module):
    """z / sqrt(mean(z^2) + 1e-8) over the feature dimension (first layer of the mapping)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + PIXELNORM_EPS)


class EqualLinear(nn.Module):
    """y = x @ (W * lr_mul / sqrt(in)).T + b * lr_mul, optionally with fused leaky ReLU."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(
                f"EqualLinear: activation must be None or 'fused_lrelu', got {activation!r}"
            )
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        # x @ (W * scale).T == (x * scale) @ W.T: scaling the input avoids copying W each call.
        if self.activation:
            # The bias enters before the activation (forgetting lr_mul here is a classic bug).
            return fused_leaky_relu(F.linear(x * self.scale, self.weight), bias)
        return F.linear(x * self.scale, self.weight, bias)

    def extra_repr(self) -> str:
        out_dim, in_dim = self.weight.shape
        return f"{in_dim}, {out_dim}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """conv2d with weight W / sqrt(in * k * k) applied at run time."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        # Stored channels_last (what the CPU conv wants): the state_dict holds the same values.
        weight = torch.randn(out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding
        )

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, {k}, stride={self.stride}, padding={self.padding}"


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2) with a learned per-channel bias."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """upfirdn2d with a fixed kernel and padding; the kernel buffer is part of the checkpoint
    (upsampling blurs store it multiplied by factor^2 to keep the signal's gain)."""

    def __init__(
        self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1
    ) -> None:
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps) * upsample_factor**2)
        self.pad = tuple(pad)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling of the RGB skip: upfirdn2d(up=2, pad=(2, 1)), kernel * factor^2."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_blur_kernel(taps) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


# ------------------------------------------------------------------------------------------------
# Modulated convolution (StyleGAN2 paper, sec. 2.2):
#   Eq. 1  w'_{oi..} = s_i * w_{oi..}                      (modulation by the style s = A(w))
#   Eq. 3  w''_{oi..} = w'_{oi..} / sqrt(sum_{i,kh,kw} w'^2 + eps)   (demodulation)
# with the equalized-lr scale 1/sqrt(in*k*k) folded into w. Up-sampling layers run a stride-2
# transposed conv (output 2H+1) and then blur with the [1,3,3,1] kernel * 4, pad (1, 1) -> 2H.
# ------------------------------------------------------------------------------------------------


def modulated_conv2d_reference(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    upsample: bool = False,
    blur_kernel: Tensor | None = None,
) -> Tensor:
    """Readable modulated conv, upstream's formulation: per-sample weights, one grouped conv.

    x [B, in, H, W]; weight [1, out, in, k, k] (raw); styles [B, in]; blur_kernel is the
    up-sampling blur (already * 4) used when `upsample`.
    """
    b, in_c, h, w = x.shape
    _, out_c, _, k, _ = weight.shape
    scale = 1.0 / math.sqrt(in_c * k * k)
    wgt = scale * weight * styles.view(b, 1, in_c, 1, 1)  # Eq. 1
    if demodulate:
        wgt = wgt * torch.rsqrt(wgt.square().sum((2, 3, 4)) + DEMOD_EPS).view(b, out_c, 1, 1, 1)
    x = x.reshape(1, b * in_c, h, w)
    if upsample:
        if blur_kernel is None:
            raise ValueError("modulated_conv2d_reference: upsample needs the blur kernel")
        wgt = wgt.transpose(1, 2).reshape(b * in_c, out_c, k, k)
        out = F.conv_transpose2d(x, wgt, stride=2, groups=b)
        out = out.reshape(b, out_c, out.shape[2], out.shape[3])
        return upfirdn2d_reference(out, blur_kernel, pad=(1, 1))
    out = F.conv2d(x, wgt.reshape(b * out_c, in_c, k, k), padding=k // 2, groups=b)
    return out.reshape(b, out_c, h, w)


def _conv_ready_weight(out_c: int, in_c: int, k: int, transposed: bool) -> Tensor:
    """N(0, 1) weight [1, out, in, k, k] laid out so the CPU conv reads it without a copy:
    weight[0] channels_last for a conv, weight[0].transpose(0, 1) channels_last for a
    transposed conv. Only the memory order differs; the state_dict holds the same values."""
    if k == 1:
        return torch.randn(1, out_c, in_c, k, k)
    if transposed:
        return torch.randn(1, in_c, k, k, out_c).permute(0, 4, 1, 2, 3)
    return torch.randn(1, out_c, k, k, in_c).permute(0, 1, 4, 2, 3)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated, up-sampling) conv; keys `weight` [1,out,in,k,k],
    `modulation.*` (the affine A: w -> s, bias init 1) and `blur.kernel` when upsampling.

    `forward(x, styles)` takes the style s = modulation(w) [B, in], not w, so callers can feed
    styles computed by another generator's affines (style-space mixing).

    Implementations (`impl`), equal up to float rounding:
    * "reference": upstream's math verbatim (`modulated_conv2d_reference`).
    * "weight": per-sample weights (Eq. 1 and 3 applied to W). Batch 1 runs a plain conv with
      the bias folded in; a larger batch runs one grouped conv (groups = B) over a
      [1, B*C, H, W] channels_last regrouping of the activations.
    * "activation": conv(x, s * W) * d = conv(x * s, W) * d: scale the input channels, run one
      conv shared by the batch (the fastest conv there is), then scale the output channels by
      the demodulation d. No per-sample weights at all.
    * "auto" (default): per-sample weights for 1x1 layers (tiny) and for batch 1 wherever the
      weights are smaller than the activations; the activation form otherwise (a plain conv
      beats a grouped one, and grouped transposed convs leave channels_last on CPU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channel = in_channels
        self.out_channel = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2
        self.impl = "auto"
        self.weight = nn.Parameter(
            _conv_ready_weight(out_channels, in_channels, kernel_size, transposed=upsample)
        )
        self._w_sq_cache: tuple[tuple, Tensor] | None = None
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)  # fmt: skip
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
            f"demodulate={self.demodulate}, upsample={self.upsample}"
        )

    def forward(
        self,
        x: Tensor,
        styles: Tensor,
        bias: Tensor | None = None,
        gain: float = 1.0,
        consume_input: bool = False,
    ) -> Tensor:
        """gain * (modulated_conv(x, styles) + bias).

        `bias` [out] is optional: callers fold the following layer's bias and positive gain in
        here, where it costs nothing. `consume_input=True` lets the layer overwrite `x` (the
        activation form scales it in place) when autograd is off; the caller promises that
        nothing reads `x` afterwards.
        """
        batch = x.shape[0]
        if styles.shape != (batch, self.in_channel):
            raise ValueError(
                f"ModulatedConv2d: styles must be [{batch}, {self.in_channel}] "
                f"(the modulation output for this layer), got {list(styles.shape)}"
            )
        impl = self.impl if self.impl != "auto" else self._choose_impl(x)
        if impl == "reference":
            out = modulated_conv2d_reference(
                x, self.weight, styles, self.demodulate, self.upsample,
                self.blur.kernel if self.upsample else None,
            )  # fmt: skip
            if bias is not None:
                out = out + bias.view(1, -1, 1, 1)
            return out * gain if gain != 1.0 else out
        if impl == "weight":
            return self._forward_weight(x, styles, bias, gain)
        if impl == "activation":
            in_place = consume_input and not torch.is_grad_enabled()
            return self._forward_activation(x, styles, bias, gain, in_place)
        raise ValueError(f"ModulatedConv2d.impl must be one of {MODCONV_IMPLS}, got {impl!r}")

    def _choose_impl(self, x: Tensor) -> str:
        b, _, h, w = x.shape
        if self.kernel_size == 1:
            return "weight"
        if b == 1 and h * w >= self.out_channel * self.kernel_size**2:
            return "weight"  # the [out, in, k, k] weights are smaller than x: modulate them
        return "activation"

    def _weight_sq_sum(self) -> Tensor:
        """sum_{kh,kw} W^2, [out, in]; cached while autograd is off and W is unchanged."""
        w = self.weight
        if torch.is_grad_enabled() or w.is_inference():
            return w[0].square().sum((2, 3))
        key = (id(w), w.data_ptr(), w._version, w.dtype, w.device)
        if self._w_sq_cache is None or self._w_sq_cache[0] != key:
            self._w_sq_cache = (key, w[0].square().sum((2, 3)))
        return self._w_sq_cache[1]

    def _demodulation(self, styles: Tensor) -> Tensor:
        """Eq. 3's 1/sigma_o for each sample, [B, out], without forming per-sample weights:
        sum_{i,kh,kw} (scale * s_i * W_oi..)^2 = scale^2 * sum_i s_i^2 * sum_{kh,kw} W_oi..^2."""
        sigma_sq = (styles.square() * self.scale**2) @ self._weight_sq_sum().t()
        return torch.rsqrt(sigma_sq + DEMOD_EPS)

    def _forward_weight(
        self, x: Tensor, styles: Tensor, bias: Tensor | None, gain: float
    ) -> Tensor:
        b = x.shape[0]
        out_c, in_c, k = self.out_channel, self.in_channel, self.kernel_size
        coef = styles * (self.scale * gain)  # [B, in]: Eq. 1 and the equalized-lr scale
        if self.demodulate:
            coef = coef.unsqueeze(1) * self._demodulation(styles).unsqueeze(2)  # [B, out, in]
        else:
            coef = coef.unsqueeze(1)  # [B, 1, in]
        if k == 1 and not self.upsample:
            # 1x1 (ToRGB): a batched matmul over the pixels of the channels_last activations.
            wgt = self.weight[0, :, :, 0, 0] * coef  # [B, out, in]
            h, w = x.shape[2:]
            pixels = x.contiguous(memory_format=torch.channels_last)
            pixels = pixels.permute(0, 2, 3, 1).reshape(b, h * w, in_c)
            if bias is None:
                out = torch.bmm(pixels, wgt.transpose(1, 2))  # [B, HW, out]
            else:
                out = torch.baddbmm((bias * gain).view(1, 1, -1), pixels, wgt.transpose(1, 2))
            return out.view(b, h, w, out_c).permute(0, 3, 1, 2)  # channels_last [B, out, H, W]
        wgt = self.weight * coef.view(b, -1, in_c, 1, 1)  # [B, out, in, k, k]
        bias_bc = None if bias is None else (bias * gain).repeat(b)
        if b == 1:
            xg = x.contiguous(memory_format=torch.channels_last)
        else:
            xg = _to_grouped(x)
        if self.upsample:
            wgt = wgt.transpose(1, 2).reshape(b * in_c, out_c, k, k)
            out = F.conv_transpose2d(xg, wgt, stride=2, groups=b)
            out = upfirdn2d(out, self.blur.kernel, pad=self.blur.pad, bias=bias_bc)
        else:
            wgt = wgt.reshape(b * out_c, in_c, k, k)
            out = F.conv2d(xg, wgt, bias_bc, padding=self.padding, groups=b)
        if b == 1:
            return out
        return _from_grouped(out, b).contiguous(memory_format=torch.channels_last)

    def _forward_activation(
        self, x: Tensor, styles: Tensor, bias: Tensor | None, gain: float, in_place: bool
    ) -> Tensor:
        b = x.shape[0]
        # conv(x, scale * s * W) = conv(x * (scale * s), W): modulate the input channels.
        modulation = (styles * self.scale).view(b, -1, 1, 1)
        xs = x.mul_(modulation) if in_place else x * modulation
        xs = xs.contiguous(memory_format=torch.channels_last)
        # Demodulation scales each output channel of each sample (it commutes with the blur).
        if self.demodulate:
            out_scale = (self._demodulation(styles) * gain).view(b, -1, 1, 1)
        else:
            out_scale = styles.new_full((b, 1, 1, 1), gain)
        bias = None if bias is None else bias * gain
        # Below, in-place epilogues on fresh conv outputs when autograd is off; out-of-place
        # (autograd-safe) forms otherwise.
        grad = torch.is_grad_enabled()
        wgt = self.weight[0]
        if self.upsample:
            out = F.conv_transpose2d(xs, wgt.transpose(0, 1), stride=2)
            out = out * out_scale if grad else out.mul_(out_scale)
            return upfirdn2d(out, self.blur.kernel, pad=self.blur.pad, bias=bias)
        out = F.conv2d(xs, wgt, padding=self.padding)
        if bias is None:
            return out * out_scale if grad else out.mul_(out_scale)
        bias = bias.view(1, -1, 1, 1)
        if grad:
            return torch.addcmul(bias, out, out_scale)
        return torch.addcmul(bias, out, out_scale, out=out)


def _add_noise_(out: Tensor, noise: Tensor, strength: Tensor) -> Tensor:
    """out += strength * noise in place; noise [1|B, 1, H, W] broadcast over channels."""
    b, c, h, w = out.shape
    if c > 1 and out.is_contiguous(memory_format=torch.channels_last):
        # As a rank-1 update per sample, [HW, 1] @ [1, C], a GEMM streams `out` once; a
        # broadcast along the innermost (channel) dimension vectorises poorly.
        rows = out.permute(0, 2, 3, 1).reshape(b, h * w, c)
        cols = noise.reshape(noise.shape[0], h * w, 1).expand(b, h * w, 1)
        rows.baddbmm_(cols, strength.view(1, 1, 1).expand(b, 1, c))
        return out
    return out.addcmul_(noise, strength)


class NoiseInjection(nn.Module):
    """x + weight * noise, noise [1 or B, 1, H, W] broadcast over channels; fresh N(0, 1) noise
    per sample when none is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 input `input` [1, C, 4, 4], repeated over the batch."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int | Tensor) -> Tensor:
        """The input for `batch` samples (an int, or a tensor whose first dim is the batch)."""
        if isinstance(batch, Tensor):
            batch = batch.shape[0]
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv -> + noise_weight * noise -> FusedLeakyReLU (bias at `activate.bias`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        demodulate: bool = True,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim,
            demodulate=demodulate, upsample=upsample, blur_kernel=blur_kernel,
        )  # fmt: skip
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(
        self,
        x: Tensor,
        styles: Tensor,
        noise: Tensor | None = None,
        consume_input: bool = False,
    ) -> Tensor:
        """x [B, in, H, W], styles s [B, in] (not w), noise [1|B, 1, H', W'] or None (random).
        `consume_input`: see ModulatedConv2d.forward."""
        if self.conv.impl == "reference":
            out = self.conv(x, styles)
            out = self.noise(out, noise)
            return self.activate(out)
        # leaky_relu(a) * sqrt(2) == leaky_relu(sqrt(2) * a): the gain and the activation bias go
        # into the conv's linear part; noise and activation then run in place (no new tensors).
        out = self.conv(x, styles, bias=self.activate.bias, gain=SQRT2, consume_input=consume_input)
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        out = _add_noise_(out, noise.to(out.dtype), self.noise.weight * SQRT2)
        return F.leaky_relu_(out, LEAKY_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, + bias [1,3,1,1], + upsampled previous skip."""

    def __init__(
        self,
        in_channels: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)

    def forward(self, x: Tensor, styles: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, styles, bias=self.bias.view(-1))
        if skip is not None:
            if not hasattr(self, "upsample"):
                raise ValueError("ToRGB: this layer has no upsampler, so it cannot take a skip")
            out = self.upsample(skip).add_(out)  # fresh tensor, not saved by autograd
        return out


class ModulatedLayer(NamedTuple):
    """One entry of `Generator.modulated_layers()`, in style order."""

    name: str  # state_dict prefix, e.g. "convs.3" or "to_rgbs.1"
    module: nn.Module  # StyledConv or ToRGB; its affine A is `module.conv.modulation`
    resolution: int  # output resolution of the layer
    kind: str  # "conv" or "torgb"


class Generator(nn.Module):
    """rosinality StyleGAN2 generator: mapping `style.*`, synthesis `input`, `conv1`, `to_rgb1`,
    `convs.*`, `to_rgbs.*`, stored noise `noises.noise_*`.

    `channel_max` caps every resolution's channel count (defaults reproduce upstream exactly);
    with it, tiny generators (size 64, style_dim 64, channel_max 32) build for tests.
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        channel_max: int = 512,
    ) -> None:
        super().__init__()
        self.log_size = _check_size(size, "Generator")
        self.size = size
        self.style_dim = style_dim
        self.channels = base_channels(channel_multiplier, channel_max)

        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu")
              for _ in range(n_mlp)),
        )  # fmt: skip

        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)

        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        in_ch = ch[4]
        for i in range(3, self.log_size + 1):
            out_ch = ch[2**i]
            self.convs.append(
                StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel)
            )
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))

    # --- style space -----------------------------------------------------------------------

    def modulated_layers(self) -> list[ModulatedLayer]:
        """Every modulated layer in style order: conv1, to_rgb1, then per resolution the
        up-sampling conv, the conv and the ToRGB (26 entries at 1024 px, 20 at 256 px).
        Built on each call, so it follows modules replaced in `convs` / `to_rgbs`."""
        layers = [
            ModulatedLayer("conv1", self.conv1, 4, "conv"),
            ModulatedLayer("to_rgb1", self.to_rgb1, 4, "torgb"),
        ]
        for j in range(len(self.to_rgbs)):
            res = 2 ** (j + 3)
            layers.append(ModulatedLayer(f"convs.{2 * j}", self.convs[2 * j], res, "conv"))
            layers.append(ModulatedLayer(f"convs.{2 * j + 1}", self.convs[2 * j + 1], res, "conv"))
            layers.append(ModulatedLayer(f"to_rgbs.{j}", self.to_rgbs[j], res, "torgb"))
        return layers

    @property
    def latent_index_of_layer(self) -> dict[str, int]:
        """W+ index that drives each modulated layer (by state_dict prefix).

        conv1 <- 0, to_rgb1 <- 1, convs[2j] <- 1+2j, convs[2j+1] <- 2+2j, to_rgbs[j] <- 3+2j:
        a ToRGB shares its W+ entry with the next up-sampling conv."""
        index = {"conv1": 0, "to_rgb1": 1}
        for j in range(len(self.to_rgbs)):
            index |= {f"convs.{2 * j}": 1 + 2 * j, f"convs.{2 * j + 1}": 2 + 2 * j,
                      f"to_rgbs.{j}": 3 + 2 * j}  # fmt: skip
        return index

    def style_latent_indices(self) -> list[int]:
        """`latent_index_of_layer` as a list in style order (parallel to modulated_layers())."""
        index = self.latent_index_of_layer
        return [index[layer.name] for layer in self.modulated_layers()]

    def layers_at_or_above(
        self, resolution: int, kinds: Sequence[str] = ("conv", "torgb")
    ) -> list[str]:
        """State-dict prefixes of the modulated layers of the given kinds whose output
        resolution is >= `resolution` (e.g. the layers a Toonify swap replaces)."""
        bad = set(kinds) - {"conv", "torgb"}
        if bad:
            raise ValueError(f"layers_at_or_above: unknown kinds {sorted(bad)} (use conv, torgb)")
        return [
            e.name
            for e in self.modulated_layers()
            if e.resolution >= resolution and e.kind in kinds
        ]

    def get_styles(self, latent: Tensor) -> list[Tensor]:
        """s_l = A_l(w_l) for every modulated layer, in style order.

        latent: W+ [B, n_latent, style_dim] (or a single W [B, style_dim] used for every layer).
        Returns a list of [B, in_channels_l] tensors.
        """
        if latent.ndim == 2:
            latent = latent.unsqueeze(1).expand(-1, self.n_latent, -1)
        if latent.ndim != 3 or latent.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(
                f"get_styles: latent must be [B, {self.n_latent}, {self.style_dim}] (W+) or "
                f"[B, {self.style_dim}] (W), got {list(latent.shape)}"
            )
        return [
            layer.module.conv.modulation(latent[:, idx])
            for layer, idx in zip(self.modulated_layers(), self.style_latent_indices())
        ]

    def synthesis_from_styles(
        self,
        styles: Sequence[Tensor],
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = False,
        max_resolution: int | None = None,
    ) -> Tensor:
        """Render images [B, 3, size, size] from per-layer styles (as `get_styles` returns).

        noise: one map per StyledConv (`num_layers` entries; None entries draw fresh noise);
        when omitted, the stored `noises.noise_*` buffers, or fresh noise if `randomize_noise`.
        max_resolution: stop after the block of that resolution (a power of two, 4..size) and
        return its skip image [B, 3, r, r] - the image the finer blocks only refine (StyleGAN2's
        skip architecture), at a fraction of the cost: the 1024 px block of FFHQ config-f is
        20 % of the generator's FLOPs (benchmarks/stylegan2.py). The styles of the skipped
        layers are ignored.
        With autograd off, a layer may overwrite its input activation once it has been used:
        forward hooks that keep a StyledConv's output must clone it.
        """
        n_styles = 3 * len(self.to_rgbs) + 2
        if len(styles) != n_styles:
            raise ValueError(
                f"synthesis_from_styles: expected {n_styles} styles (one per modulated "
                f"layer, see modulated_layers()), got {len(styles)}"
            )
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        elif len(noise) != self.num_layers:
            raise ValueError(
                f"synthesis_from_styles: noise needs {self.num_layers} entries, got {len(noise)}"
            )
        blocks = len(self.to_rgbs)
        if max_resolution is not None:
            stop = int(max_resolution)
            if stop < 4 or stop > self.size or stop & (stop - 1):
                raise ValueError(
                    f"synthesis_from_styles: max_resolution must be a power of two in "
                    f"4..{self.size}, got {max_resolution}"
                )
            blocks = stop.bit_length() - 3  # blocks j render 2^(j+3): 4 -> 0, 8 -> 1, ...
        batch = styles[0].shape[0]
        style_iter = iter(styles)
        out = self.input(batch)
        # Each activation is read by the next conv only (ToRGB runs first), so the convs may
        # reuse their input's memory when autograd is off.
        out = self.conv1(out, next(style_iter), noise[0], consume_input=True)
        skip = self.to_rgb1(out, next(style_iter))
        for j in range(blocks):
            out = self.convs[2 * j](out, next(style_iter), noise[2 * j + 1], consume_input=True)
            out = self.convs[2 * j + 1](out, next(style_iter), noise[2 * j + 2], consume_input=True)
            skip = self.to_rgbs[j](out, next(style_iter), skip)
        return skip.contiguous()

    def set_modconv_impl(self, impl: str) -> None:
        """Pick the modulated-conv implementation of every layer (see ModulatedConv2d)."""
        if impl not in MODCONV_IMPLS:
            raise ValueError(f"set_modconv_impl: impl must be one of {MODCONV_IMPLS}, got {impl!r}")
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.impl = impl

    # --- upstream API ---------------------------------------------------------------------

    def make_noise(self) -> list[Tensor]:
        """Fresh noise maps, one per StyledConv, on the generator's device."""
        device = self.input.input.device
        noises = [torch.randn(1, 1, 4, 4, device=device)]
        for i in range(3, self.log_size + 1):
            noises += [torch.randn(1, 1, 2**i, 2**i, device=device) for _ in range(2)]
        return noises

    def mean_latent(self, n_latent: int) -> Tensor:
        """Mean W of `n_latent` random z (global RNG), [1, style_dim]."""
        latent_in = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(latent_in).mean(0, keepdim=True)

    def get_latent(self, z: Tensor) -> Tensor:
        """The mapping network: z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    def forward(
        self,
        styles: Sequence[Tensor] | Tensor,
        return_latents: bool = False,
        inject_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        input_is_latent: bool = False,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Upstream call: `g([z])`, `g([z1, z2], inject_index=k)`, `g([w], input_is_latent=True)`.

        Returns (image [B, 3, size, size], W+ latent [B, n_latent, style_dim] or None).
        """
        if isinstance(styles, Tensor):
            styles = [styles]
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("Generator: truncation < 1 needs truncation_latent (mean W)")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        wplus = [s if s.ndim == 3 else s.unsqueeze(1).repeat(1, self.n_latent, 1) for s in styles]
        if len(wplus) < 2:
            latent = wplus[0]
        else:
            # Style mixing: the first style drives W+ entries [0, inject_index), the second the
            # rest (a third or later style is ignored, as upstream does).
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = torch.cat([wplus[0][:, :inject_index], wplus[1][:, inject_index:]], dim=1)

        image = self.synthesis_from_styles(
            self.get_styles(latent), noise=noise, randomize_noise=randomize_noise
        )
        return image, (latent if return_latents else None)


# ------------------------------------------------------------------------------------------------
# Discriminator
# ------------------------------------------------------------------------------------------------


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU], keys `.0/.1/.2` as in upstream's Sequential.

    Down-sampling layers blur first (pad (2, 2) before a 3x3, (1, 1) before a 1x1) and then
    convolve with stride 2. The forward fuses the bias and sqrt(2) gain into the conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                        bias=bias and not activate)
        )  # fmt: skip
        if activate:
            layers.append(FusedLeakyReLU(out_channels, bias=bias))
        super().__init__(*layers)
        self.downsample = downsample
        self.activate = activate

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        """gain * layer(x) for a positive `gain` (folded into the conv weights)."""
        conv: EqualConv2d = self[1] if self.downsample else self[0]
        stride = conv.stride
        if self.downsample:
            blur: Blur = self[0]
            if conv.weight.shape[-1] == 1:
                # A 1x1 stride-2 conv only reads even samples: blur just those.
                x = upfirdn2d(x, blur.kernel, down=2, pad=blur.pad)
                stride = 1
            else:
                x = blur(x)
        if self.activate:
            act: FusedLeakyReLU = self[-1]
            g = gain * SQRT2  # leaky_relu(a) * sqrt(2) * gain == leaky_relu(sqrt(2) * gain * a)
            bias = None if act.bias is None else act.bias * g
        else:
            g = gain
            bias = None if conv.bias is None else conv.bias * g
        out = F.conv2d(x, conv.weight * (conv.scale * g), bias, stride=stride, padding=conv.padding)
        return F.leaky_relu_(out, LEAKY_SLOPE) if self.activate else out


class ResBlock(nn.Module):
    """(conv2(conv1(x)) + skip(x)) / sqrt(2); conv2 and skip down-sample by 2."""

    def __init__(
        self, in_channels: int, out_channels: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True,
                               blur_kernel=blur_kernel)  # fmt: skip
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True,
                              blur_kernel=blur_kernel, activate=False, bias=False)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x), gain=1 / SQRT2)  # the 1/sqrt(2) rides in the weights
        # In place on the skip: autograd keeps conv2's activation output, not the skip conv's.
        return self.skip(x, gain=1 / SQRT2).add_(out)


class Discriminator(nn.Module):
    """rosinality StyleGAN2 discriminator: `convs.*` (FromRGB + ResBlocks), minibatch stddev,
    `final_conv`, `final_linear`. Runs in channels_last (inputs are converted on entry)."""

    def __init__(
        self,
        size: int,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        channel_max: int = 512,
    ) -> None:
        super().__init__()
        log_size = _check_size(size, "Discriminator")
        self.size = size
        ch = base_channels(channel_multiplier, channel_max)
        self.channels = ch
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        in_ch = ch[size]
        for i in range(log_size, 2, -1):
            out_ch = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
            EqualLinear(ch[4], 1),
        )

    def minibatch_stddev(self, x: Tensor) -> Tensor:
        """Append the std over groups of min(B, 4) samples, averaged over (C, H, W).

        Groups are strided: sample b belongs to group b % (B / group), so with B = 8 the groups
        are {0,2,4,6} and {1,3,5,7}."""
        b, c, h, w = x.shape
        group = min(b, self.stddev_group)
        if b % group:
            raise ValueError(
                f"Discriminator: batch {b} is not divisible by the minibatch-stddev group "
                f"{group}; use a batch that is a multiple of {self.stddev_group} (or below it)"
            )
        feat = self.stddev_feat
        y = x.reshape(group, -1, feat, c // feat, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + STDDEV_EPS)
        y = y.mean((2, 3, 4), keepdim=True).squeeze(2)  # [B / group, feat, 1, 1]
        y = y.repeat(group, 1, h, w)
        return torch.cat([x, y], 1)

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, 3, size, size] -> logits [B, 1]."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.size, self.size):
            raise ValueError(
                f"Discriminator: expected images [B, 3, {self.size}, {self.size}], "
                f"got {list(x.shape)}"
            )
        out = self.convs(x.contiguous(memory_format=torch.channels_last))
        out = self.minibatch_stddev(out)
        out = self.final_conv(out)
        out = out.reshape(out.shape[0], -1)  # NCHW (channel-major) order, whatever the layout
        return self.final_linear(out)
