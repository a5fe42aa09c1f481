"""Differentiable augmentation for few-shot GAN training (DiffAugment ops, ADA-style adaptive p).

Zhao et al. 2020 ("Differentiable Augmentation for Data-Efficient GAN Training") apply the same
family of random, differentiable transforms to real and fake images before the discriminator so
that it cannot memorise a tiny training set. Karras et al. 2020 (StyleGAN2-ADA) apply each
transform with a probability p tuned on-line from the overfitting heuristic r_t = E[sign(D(real))].
Both are implemented here: `DiffAugment(x, p)` and `AdaptiveAugmentProbability`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Ops in the order they are applied (the order of the DiffAugment reference code).
KNOWN_OPS = ("color", "translation", "cutout")


@dataclass
class AugmentParams:
    """Per-sample random parameters of one augmentation call (all tensors have batch size B).

    Sampling and applying are separate so that the same transform can be applied to several
    tensors (e.g. an image and its gradient check copy) and tested in isolation.
    """

    brightness: Tensor  # [B] added to every pixel (0 = off)
    saturation: Tensor  # [B] factor around the per-pixel channel mean (1 = off)
    contrast: Tensor  # [B] factor around the per-image mean (1 = off)
    translation: Tensor  # [B, 2] int64 shift (dy, dx) in pixels (0 = off); empty area is zero
    cutout_center: Tensor  # [B, 2] int64 centre (cy, cx) of the zeroed square
    cutout_on: Tensor  # [B] bool
    cutout_size: tuple[int, int]  # (h, w) of the zeroed square
    image_size: tuple[int, int]  # (H, W) the parameters were drawn for

    def select(self, index: int) -> AugmentParams:
        """The parameters of sample `index` alone (a batch of one)."""
        sl = slice(index, index + 1)
        return AugmentParams(
            brightness=self.brightness[sl],
            saturation=self.saturation[sl],
            contrast=self.contrast[sl],
            translation=self.translation[sl],
            cutout_center=self.cutout_center[sl],
            cutout_on=self.cutout_on[sl],
            cutout_size=self.cutout_size,
            image_size=self.image_size,
        )


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """`"color,translation,cutout"` (or a list) -> validated tuple of op names; "" means none."""
    ops = [op.strip() for op in policy.split(",")] if isinstance(policy, str) else list(policy)
    ops = [op for op in ops if op]
    unknown = [op for op in ops if op not in KNOWN_OPS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment op(s) {unknown} in policy {policy!r}; choose from {KNOWN_OPS}"
        )
    return tuple(ops)


class DiffAugment(nn.Module):
    """DiffAugment colour / translation / cutout, each op applied per sample with probability p.

    With `p=1` this is the reference DiffAugment (every op on every sample); with `p<1` it is the
    ADA-style stochastic version whose p an `AdaptiveAugmentProbability` controller can tune.
    Images are float [-1, 1] NCHW; the output is differentiable with respect to the input
    (colour ops are affine, translation and cutout are index gathers / masks).

    Args:
        policy: comma-separated ops among "color", "translation", "cutout" ("" = identity).
        translation_ratio: maximum shift as a fraction of the image side (reference: 1/8).
        cutout_ratio: side of the zeroed square as a fraction of the image side (reference: 1/2).
    """

    def __init__(
        self,
        policy: str | Sequence[str] = "color,translation,cutout",
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        self.ops = parse_policy(policy)
        if not 0.0 <= translation_ratio < 1.0:
            raise ValueError(f"translation_ratio must be in [0, 1), got {translation_ratio}")
        if not 0.0 < cutout_ratio <= 1.0:
            raise ValueError(f"cutout_ratio must be in (0, 1], got {cutout_ratio}")
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio

    def extra_repr(self) -> str:
        return (
            f"ops={self.ops}, translation_ratio={self.translation_ratio}, "
            f"cutout_ratio={self.cutout_ratio}"
        )

    def sample_params(
        self,
        batch: int,
        image_size: tuple[int, int],
        p: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> AugmentParams:
        """Draw the random parameters of one call. Ops not in the policy are left at identity.

        Drawn on the generator's device (CPU when `generator` is None or a CPU generator), then
        moved to `device`, so a seeded call gives the same transform on any device.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation probability p must be in [0, 1], got {p}")
        height, width = image_size
        draw_device = generator.device if generator is not None else torch.device("cpu")

        def uniform(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=draw_device)

        def enabled(op: str) -> Tensor:
            # One Bernoulli(p) draw per sample and op, always drawn so that the random stream
            # does not depend on which ops are enabled.
            on = uniform(batch) < p
            return on if op in self.ops else torch.zeros_like(on)

        color_on = enabled("color")
        brightness = torch.where(color_on, uniform(batch) - 0.5, 0.0)
        saturation = torch.where(color_on, uniform(batch) * 2.0, 1.0)
        contrast = torch.where(color_on, uniform(batch) + 0.5, 1.0)

        translation_on = enabled("translation")
        max_shift = torch.tensor(
            [int(height * self.translation_ratio + 0.5), int(width * self.translation_ratio + 0.5)],
            device=draw_device,
        )
        # integer shifts uniform in [-max_shift, max_shift] (inclusive), like the reference
        shift = torch.floor(uniform(batch, 2) * (2 * max_shift + 1)).long() - max_shift
        translation = torch.where(translation_on[:, None], shift, 0)

        cutout_on = enabled("cutout")
        cutout_size = (
            max(1, int(height * self.cutout_ratio + 0.5)),
            max(1, int(width * self.cutout_ratio + 0.5)),
        )
        # centres anywhere in the image: the square may be clipped by the border (as upstream)
        limits = torch.tensor([height, width], device=draw_device)
        cutout_center = torch.floor(uniform(batch, 2) * limits).long()

        return AugmentParams(
            brightness=brightness.to(device),
            saturation=saturation.to(device),
            contrast=contrast.to(device),
            translation=translation.to(device),
            cutout_center=cutout_center.to(device),
            cutout_on=cutout_on.to(device),
            cutout_size=cutout_size,
            image_size=(height, width),
        )

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """Apply drawn parameters to `images` [B, C, H, W] (B and H, W must match the draw)."""
        batch, _, height, width = images.shape
        if (height, width) != params.image_size or params.brightness.shape[0] != batch:
            raise ValueError(
                f"augmentation parameters were drawn for batch {params.brightness.shape[0]} at "
                f"{params.image_size}, but the images are batch {batch} at {(height, width)}"
            )
        out = images
        dtype = images.dtype
        if "color" in self.ops:
            out = out + params.brightness.to(dtype).view(-1, 1, 1, 1)
            channel_mean = out.mean(dim=1, keepdim=True)
            out = (out - channel_mean) * params.saturation.to(dtype).view(-1, 1, 1, 1)
            out = out + channel_mean
            image_mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - image_mean) * params.contrast.to(dtype).view(-1, 1, 1, 1) + image_mean
        if "translation" in self.ops:
            out = translate(out, params.translation)
        if "cutout" in self.ops:
            out = out * cutout_mask(params, dtype=dtype, device=images.device)
        return out

    def forward(
        self, images: Tensor, p: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Augment a batch; `p` is the per-sample, per-op probability (1 = the reference)."""
        if not self.ops or p <= 0.0:
            return images
        params = self.sample_params(
            images.shape[0],
            tuple(images.shape[-2:]),
            p=p,
            generator=generator,
            device=images.device,
        )
        return self.apply(images, params)


def translate(images: Tensor, shift: Tensor) -> Tensor:
    """Shift each image by integer (dy, dx) pixels; uncovered pixels become 0 (mid-grey in [-1,1]).

    Pure index gather, so gradients flow back to the pixels that stay in view.
    """
    batch, _, height, width = images.shape
    rows = torch.arange(height, device=images.device)[None, :] - shift[:, 0:1]  # [B, H]
    cols = torch.arange(width, device=images.device)[None, :] - shift[:, 1:2]  # [B, W]
    valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None]
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    row_index = rows.clamp(0, height - 1)[:, :, None]
    col_index = cols.clamp(0, width - 1)[:, None, :]
    # advanced indices around a slice put the indexed dims first: result is [B, H, W, C]
    gathered = images[batch_index, :, row_index, col_index]
    return gathered.permute(0, 3, 1, 2) * valid[:, None].to(images.dtype)


def cutout_mask(
    params: AugmentParams, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """[B, 1, H, W] mask: 0 inside each enabled sample's cutout square, 1 elsewhere."""
    height, width = params.image_size
    cut_h, cut_w = params.cutout_size
    # the square spans [c - size//2, c - size//2 + size) on each axis, clipped to the image
    top = (params.cutout_center[:, 0] - cut_h // 2)[:, None]
    left = (params.cutout_center[:, 1] - cut_w // 2)[:, None]
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= top.to(device)) & (rows < top.to(device) + cut_h)  # [B, H]
    in_cols = (cols >= left.to(device)) & (cols < left.to(device) + cut_w)  # [B, W]
    inside = in_rows[:, :, None] & in_cols[:, None, :] & params.cutout_on.to(device)[:, None, None]
    return (~inside).to(dtype)[:, None]


class AdaptiveAugmentProbability(nn.Module):
    """ADA's controller: raise p when the discriminator overfits, lower it otherwise.

    Overfitting heuristic r_t = E[sign(D(real))] over the last `interval` updates; every
    `interval` updates p moves by sign(r_t - target) * (images seen) / (speed_kimg * 1000), so
    p can traverse [0, 1] in `speed_kimg` thousand images (StyleGAN2-ADA: target 0.6, 500 kimg;
    few-shot runs see far fewer images, hence a faster default). State lives in buffers so it
    is saved and restored with the LightningModule.
    """

    p: Tensor
    r_t: Tensor
    sign_sum: Tensor
    count: Tensor
    updates: Tensor

    def __init__(
        self,
        target: float = 0.6,
        speed_kimg: float = 100.0,
        interval: int = 4,
        initial_p: float = 0.0,
        max_p: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < target < 1.0:
            raise ValueError(f"ADA target r_t must be in (0, 1), got {target}")
        if speed_kimg <= 0 or interval < 1:
            raise ValueError(
                f"ADA needs speed_kimg > 0 and interval >= 1, got {speed_kimg}, {interval}"
            )
        if not 0.0 <= initial_p <= max_p <= 1.0:
            raise ValueError(f"ADA needs 0 <= initial_p <= max_p <= 1, got {initial_p}, {max_p}")
        self.target = target
        self.speed_kimg = speed_kimg
        self.interval = interval
        self.max_p = max_p
        # float64 so thousands of tiny increments do not drift
        self.register_buffer("p", torch.tensor(float(initial_p), dtype=torch.float64))
        self.register_buffer("r_t", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("sign_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("updates", torch.tensor(0, dtype=torch.int64))

    @property
    def probability(self) -> float:
        return float(self.p)

    def update(
        self, real_logits: Tensor, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> float:
        """Accumulate sign(D(real)) of one step; adjust p every `interval` calls; return p.

        `reduce` sums a tensor over data-parallel ranks (e.g. the strategy's all-reduce) so that
        every rank moves p identically.
        """
        stats = torch.stack(
            [
                torch.sign(real_logits.detach()).sum().to(torch.float64),
                torch.tensor(real_logits.numel(), dtype=torch.float64, device=real_logits.device),
            ]
        )
        if reduce is not None:
            stats = reduce(stats)
        self.sign_sum += stats[0].to(self.sign_sum.device)
        self.count += stats[1].to(self.count.device)
        self.updates += 1
        if int(self.updates) % self.interval == 0 and float(self.count) > 0:
            self.r_t.copy_(self.sign_sum / self.count)
            step = torch.sign(self.r_t - self.target) * self.count / (self.speed_kimg * 1000.0)
            self.p.copy_((self.p + step).clamp(0.0, self.max_p))
            self.sign_sum.zero_()
            self.count.zero_()
        return self.probability
