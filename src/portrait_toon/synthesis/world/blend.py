"""The embedded world's stand-in for the paper's two-stage baseline (ArcaneGAN / Toonify layer
blending, docs/method.md): one blended face generator renders the WHOLE frame, so what lies
outside the face (background, body, clothes) takes the face generator's look instead of a
stylised copy of the photo.

A face generator renders those out-of-distribution regions badly: flattened, detail lost,
colours pulled toward its own training palette with a purplish cast (the paper's Fig. 3). This
module renders that look from the world's character rendering of the same scene:

    K    = feather(character labels in keep_classes)                      the face it renders well
    O    = posterize(tone(blur(Lab(X_cdsm))))                             everything else
    tone : L* -> m + contrast * (L* - m),  ab -> lerp(ab, t_ab, pull)     t_ab: the palette target
    t_ab = rotate(lerp(mean ab of the character's kept pixels, cast_ab, cast_weight), hue jitter)
    out  = K * X_cdsm + (1 - K) * O

`pull` and the hue jitter are drawn per pair from a hash of its seed, so a pair's rendering is
a pure function of its seed and the options, like the rest of the world. These are emulations
chosen to look like the paper's figure, not measurements of a real blended generator
(docs/embedded_world.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from portrait_toon.synthesis.color import lab_to_rgb, rgb_to_lab
from portrait_toon.synthesis.parsing import class_mask, feather, scaled_px
from portrait_toon.synthesis.world.materials import rgb255_to_lab
from portrait_toon.synthesis.world.noise import MASK32, uniform_hash

# Face-parsing ids a face generator renders in distribution: the face, its parts and the hair
# (no neck, clothes, hats or background).
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17)
_JITTER_SALT = 131  # hash salt of the per-pair draws (distinct from the renderer's salts)


@dataclass(frozen=True)
class BlendLook:
    """Validated options of the blended rendering (conf/mixer/procedural_blend.yaml)."""

    keep_classes: tuple[int, ...]
    keep_feather: float
    blur: float
    contrast: float
    palette_pull: float
    pull_jitter: float
    cast_ab: tuple[float, float]
    cast_weight: float
    hue_jitter_deg: float
    posterize: tuple[float, float, float]
    reference_resolution: int

    @classmethod
    def build(
        cls,
        keep_classes: Sequence[int] = FACE_CLASSES,
        keep_feather: float = 1.5,
        blur: float = 0.012,
        contrast: float = 0.6,
        palette_pull: float = 0.6,
        pull_jitter: float = 0.25,
        cast_rgb: Sequence[float] = (150, 105, 200),
        cast_weight: float = 0.6,
        hue_jitter_deg: float = 20.0,
        posterize: Sequence[float] = (12.0, 10.0, 10.0),
        reference_resolution: int = 256,
    ) -> BlendLook:
        """Options checked one by one; a bad one raises naming its key in the mixer config."""

        def unit(name: str, value: float) -> float:
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"mixer.{name} must be in [0, 1], got {value}")
            return float(value)

        if float(blur) < 0 or float(keep_feather) < 0 or float(hue_jitter_deg) < 0:
            raise ValueError(
                "mixer.blur, mixer.keep_feather and mixer.hue_jitter_deg must be >= 0, got "
                f"{blur}, {keep_feather}, {hue_jitter_deg}"
            )
        steps = tuple(float(v) for v in posterize)
        if len(steps) != 3 or min(steps) < 0:
            raise ValueError(f"mixer.posterize needs 3 steps >= 0 (L*, a*, b*), got {posterize}")
        if int(reference_resolution) <= 0:
            raise ValueError(
                f"mixer.reference_resolution must be positive, got {reference_resolution}"
            )
        cast = rgb255_to_lab(cast_rgb, "cast_rgb")
        return cls(
            keep_classes=tuple(int(c) for c in keep_classes),
            keep_feather=float(keep_feather),
            blur=float(blur),
            contrast=unit("contrast", contrast),
            palette_pull=unit("palette_pull", palette_pull),
            pull_jitter=unit("pull_jitter", pull_jitter),
            cast_ab=(cast[1], cast[2]),
            cast_weight=unit("cast_weight", cast_weight),
            hue_jitter_deg=float(hue_jitter_deg),
            posterize=steps,  # type: ignore[arg-type]
            reference_resolution=int(reference_resolution),
        )


def _masked_mean(values: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image mean of `values` [B, C, H, W] under `weight` [B, 1, H, W], and the weight sum."""
    total = weight.sum((-1, -2))
    return (values * weight).sum((-1, -2)) / total.clamp(min=1e-6), total


def _pair_draws(seeds: Tensor, count: int, device: torch.device) -> Tensor:
    """`count` uniforms [B, count] in [0, 1) per pair, hashed from its seed (any int64)."""
    keys = (seeds.to("cpu", torch.int64) & MASK32).view(-1, 1)
    return uniform_hash(keys, _JITTER_SALT, torch.arange(count).view(1, -1)).to(device)


def blend_frame(character: Tensor, labels: Tensor, seeds: Tensor, look: BlendLook) -> Tensor:
    """The blended generator's whole frame [B, 3, H, W] in [-1, 1] from the character rendering
    [B, 3, H, W], its parse `labels` [B, H, W] and the pairs' `seeds` [B] (module docstring)."""
    size = tuple(character.shape[-2:])
    lab = rgb_to_lab(character)
    keep = class_mask(labels, look.keep_classes)
    keep = feather(keep, scaled_px(look.keep_feather, size, look.reference_resolution))
    # Low-pass: the face generator has no fine structure for regions it never saw.
    sigma = look.blur * min(size)
    smooth = feather(lab, 2.0 * sigma) if sigma > 0 else lab
    # The palette target: the character's own face and hair colours, drawn toward the cast,
    # turned by a per-pair hue jitter.
    face_ab, face_weight = _masked_mean(lab[:, 1:], keep)
    cast = torch.tensor(look.cast_ab, device=lab.device).expand_as(face_ab)
    own = torch.where(face_weight > 0, face_ab, cast)
    target = torch.lerp(own, cast, look.cast_weight)
    draws = _pair_draws(seeds, 2, lab.device)
    angle = math.radians(look.hue_jitter_deg) * (2.0 * draws[:, 0] - 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    target = torch.stack(
        [cos * target[:, 0] - sin * target[:, 1], sin * target[:, 0] + cos * target[:, 1]], 1
    )
    pull = (look.palette_pull * (1.0 + look.pull_jitter * (2.0 * draws[:, 1] - 1.0))).clamp(0, 1)
    # Tone: lightness contrast flattened toward the mean of the re-rendered region, a*/b*
    # pulled toward the palette target.
    outside = 1.0 - keep
    mean_l, _ = _masked_mean(smooth[:, :1], outside)
    lightness = mean_l.view(-1, 1, 1, 1) + look.contrast * (
        smooth[:, :1] - mean_l.view(-1, 1, 1, 1)
    )
    chroma = torch.lerp(smooth[:, 1:], target.view(-1, 2, 1, 1), pull.view(-1, 1, 1, 1))
    toned = torch.cat([lightness.clamp(0.0, 100.0), chroma], 1)
    steps = torch.tensor(look.posterize, device=lab.device).view(1, 3, 1, 1)
    posterised = torch.where(steps > 0, torch.round(toned / steps.clamp(min=1e-6)) * steps, toned)
    posterised[:, :1] = posterised[:, :1].clamp(0.0, 100.0)
    return keep * character + outside * lab_to_rgb(posterised)
