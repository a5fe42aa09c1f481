"""Metrics of the method's claims (docs/method.md, evaluation): does F keep the input's skin tone
across the whole range, keep the background, and learn the mapping at all? `evaluate_stylizer`
is the one function evaluate.py, training's final evaluation and `make ablation` call.

Skin tone is binned by the Individual Typology Angle, ITA = atan((L* - 50) / b*) in degrees,
with the six categories of Chardon et al. (1991) / Del Bino & Bernerd (2013):
very_light > 55 >= light > 41 >= intermediate > 28 >= tan > 10 >= brown > -30 >= dark.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from portrait_toon.synthesis.color import delta_e00, rgb_to_lab
from portrait_toon.synthesis.parsing import erode, scaled_px

log = logging.getLogger(__name__)

__all__ = [
    "SKIN_TONE_BINS",
    "delta_e00",
    "evaluate_stylizer",
    "ita",
    "ita_degrees",
    "masked_mean_lab",
    "output_skin_mask",
    "rgb_to_lab",
    "person_regions",
    "skin_tone_bin",
    "skin_tone_class",
]

# (name, lower ITA bound in degrees), lightest first; a value belongs to the first bin whose
# bound it exceeds.
SKIN_TONE_BINS: tuple[tuple[str, float], ...] = (
    ("very_light", 55.0),
    ("light", 41.0),
    ("intermediate", 28.0),
    ("tan", 10.0),
    ("brown", -30.0),
    ("dark", -math.inf),
)
# Pixels count as background where the (feathered) head mask is below this: the target there
# is exactly the background stylizer's output, away from the blended seam.
BACKGROUND_MAX_HEAD = 0.05
# Skin means need enough pixels to be a colour rather than a few antialiased edge pixels.
MIN_SKIN_PIXELS = 16
# The output's skin is read this many px (at SKIN_REFERENCE_RESOLUTION, scaled to the image;
# 1 px at 128) inside the character's skin border: the tone, not how sharp the face's outline
# and hair edge are (that is what the L1 measures). Measured on a demo F at 128 px: the
# output's skin mean was 5.7 L* darker than the target's over the whole character skin, 2.4
# with its one-pixel rim left out.
SKIN_ERODE_PX = 2.0
SKIN_REFERENCE_RESOLUTION = 256
# Head-mask parts smaller than this fraction of the frame are not counted as people.
MIN_HEAD_FRACTION = 0.003


def ita_degrees(lab: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """ITA in degrees of Lab values along `dim`: atan2(L* - 50, b*), equal to
    atan((L* - 50) / b*) for b* > 0 (all real skin) and defined for b* <= 0 too."""
    lightness = lab.select(dim, 0)
    yellowness = lab.select(dim, 2)
    return torch.rad2deg(torch.atan2(lightness - 50.0, yellowness))


ita = ita_degrees  # the short name docs/interfaces.md uses


def skin_tone_bin(ita_value: float | torch.Tensor) -> str:
    """The skin-tone category name (SKIN_TONE_BINS) of one ITA value in degrees."""
    value = float(ita_value)
    if math.isnan(value):
        raise ValueError("skin_tone_bin: ITA is NaN (empty skin region?)")
    for name, lower in SKIN_TONE_BINS:
        if value > lower:
            return name
    return SKIN_TONE_BINS[-1][0]


def skin_tone_class(ita_value: float | torch.Tensor) -> int:
    """Index of `skin_tone_bin(ita_value)` in SKIN_TONE_BINS: 0 is the lightest class."""
    name = skin_tone_bin(ita_value)
    return next(i for i, (bin_name, _) in enumerate(SKIN_TONE_BINS) if bin_name == name)


def person_regions(head_mask: torch.Tensor, min_fraction: float = MIN_HEAD_FRACTION) -> list:
    """One [H,W] bool mask per person of one image: the connected parts of its head mask
    ([1,H,W] or [H,W]) above 0.5 that cover at least `min_fraction` of the frame (heads that
    touch count as one person)."""
    binary = (head_mask.reshape(head_mask.shape[-2:]) > 0.5).to(torch.uint8).cpu().numpy()
    count, components = cv2.connectedComponents(binary, connectivity=8)
    regions = []
    for label in range(1, count):
        region = components == label
        if region.sum() >= min_fraction * binary.size:
            regions.append(torch.from_numpy(np.ascontiguousarray(region)))
    return regions


def masked_mean_lab(lab: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask-weighted mean Lab per image ([B,3]) and the mask's pixel mass per image ([B])."""
    weight = mask.to(lab.dtype)
    mass = weight.sum(dim=(1, 2, 3))
    mean = (lab * weight).sum(dim=(2, 3)) / mass.clamp_min(1e-6).unsqueeze(1)
    return mean, mass


def output_skin_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B,1,H,W] region to average the output's skin over: the character's parsed skin
    (`character_skin_mask`, a synthesizer stage) where the batch has it, else the source skin.

    The target's head is the character's, whose face and hair differ in shape from the
    photo's; its skin is where the character's is, and so is a faithful F(x)'s. Averaged over
    the *source* skin instead, the output mean takes in the character's eyes, brows and hair:
    the targets themselves then score ~5 ΔE00 from the input with colour reflection on, while
    returning the input unchanged scores 0. CutFace pairs (tiles moved the heads) and batches
    without the stage fall back to `skin_mask`. The region is eroded by SKIN_ERODE_PX.
    """
    skin = batch["skin_mask"]
    region = skin
    character = batch.get("character_skin_mask")
    if character is not None and character.shape == skin.shape:
        region = character.to(skin.device, skin.dtype)
        if "is_cutface" in batch:
            cut = batch["is_cutface"].to(skin.device).view(-1, 1, 1, 1).bool()
            region = torch.where(cut, skin, region)
    size = (skin.shape[-2], skin.shape[-1])
    return erode(region, scaled_px(SKIN_ERODE_PX, size, SKIN_REFERENCE_RESOLUTION))


def _bin_means(values_by_bin: Mapping[str, list[float]]) -> dict[str, float]:
    """Bin name -> mean of its values, lightest bin first, bins with values only."""
    return {
        name: sum(values_by_bin[name]) / len(values_by_bin[name])
        for name, _ in SKIN_TONE_BINS
        if name in values_by_bin
    }


@torch.no_grad()
def evaluate_stylizer(
    net: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    bg_key: str = "background",
    device: torch.device | str | None = None,
    perceptual: nn.Module | None = None,
    distributions: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run `net` over held-out pair batches and measure what docs/method.md claims.

    Each batch holds `src`, `tgt` ([B,3,H,W] in [-1,1]), `skin_mask` and `head_mask`
    ([B,1,H,W], source geometry), optionally `character_skin_mask` (see `output_skin_mask`)
    and optionally `bg_key`, the background stylizer's output
    B(x) with the same geometry as `src` (synthesizer stages with crop off). Where `bg_key` is
    absent, mis-shaped, or the pair is a CutFace pair (`is_cutface`), the target stands in for
    B(x): outside the head mask the target *is* B's output by construction.
    `perceptual`: a distance network d(x, y) -> [B] (the shift-tolerant LPIPS) for
    `background_stlpips_mean`; `distributions`: `DistributionDistance`s fed (targets, F(x)),
    whose `compute()` keys (`kid_stlpips`, ...) join the result.

    Returns:
        l1_output_target, l1_input_target: mean |F(x) - y| and |x - y| over all pixels.
        l1_head_output_target, l1_head_input_target, l1_background_output_target,
            l1_background_input_target: the same means inside the head mask (weighted by it)
            and outside it (weighted by 1 - mask), over all images: where F learned what.
        skin_delta_e00_mean: mean over skin-tone bins of the per-bin mean ΔE00 between the
            input's mean skin Lab (over `skin_mask`) and the output's (over
            `output_skin_mask(batch)`: the character's skin where the batch has that stage,
            without its border pixel); images binned by the input's ITA. The embedded world's
            targets score ~0.4 here with colour reflection, ~25 without.
        skin_delta_e00_source_region_mean: the same with the output's mean over the source
            skin mask as is (for reference: biased by the character's other face shape).
        skin_delta_e00_by_bin: bin name -> that per-bin mean (bins with images only).
        skin_delta_e00_worst, skin_delta_e00_worst_bin: the largest per-bin mean and its bin.
        skin_count_by_bin: bin name -> number of images.
        skin_ita_shift_mean: mean |ITA(output skin) - ITA(input skin)| in degrees.
        whitewash_rate: share of people (`person_regions` of the head mask, each person's
            skin inside their own head) whose skin-tone class in F(x) is one or more classes
            lighter than in x; num_people: how many people were measured.
        background_delta_e00_mean: per-pixel ΔE00 between F(x) and B(x) where the head mask
            is below BACKGROUND_MAX_HEAD, averaged per image, then over images.
        background_stlpips_mean: ST-LPIPS(F(x) with B(x) pasted over the heads, B(x)) per
            image, mean over images (None without `perceptual`).
        num_images, num_skin_images, num_background_images.
        A measurement with no qualifying image is None.
    """
    parameter = next(iter(net.parameters()), None)
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = net.training
    net.eval()

    l1_output, l1_input, counted = 0.0, 0.0, 0
    # region -> [sum |F(x) - y| * w, sum |x - y| * w, sum w] with w the head mask or 1 - it
    regional = {"head": [0.0, 0.0, 0.0], "background": [0.0, 0.0, 0.0]}
    skin_by_bin: dict[str, list[float]] = {}
    source_region_by_bin: dict[str, list[float]] = {}
    ita_shifts: list[float] = []
    people_lighter: list[bool] = []
    background_scores: list[float] = []
    perceptual_scores: list[float] = []
    try:
        for batch_number, batch in enumerate(batches):
            missing = [k for k in ("src", "tgt", "skin_mask", "head_mask") if k not in batch]
            if missing:
                raise KeyError(f"evaluate_stylizer: batch {batch_number} lacks keys {missing}")
            src = batch["src"].to(device).float()
            tgt = batch["tgt"].to(device).float()
            output = net(src).float()
            size = src.shape[0]
            l1_output += float((output - tgt).abs().mean(dim=(1, 2, 3)).sum())
            l1_input += float((src - tgt).abs().mean(dim=(1, 2, 3)).sum())
            counted += size
            head = batch["head_mask"].to(device).float()
            out_error = (output - tgt).abs().mean(dim=1, keepdim=True)
            in_error = (src - tgt).abs().mean(dim=1, keepdim=True)
            for name, weight in (("head", head), ("background", 1.0 - head)):
                sums = regional[name]
                sums[0] += float((out_error * weight).sum())
                sums[1] += float((in_error * weight).sum())
                sums[2] += float(weight.sum())

            # Skin: the input's mean colour over its skin vs the output's over the output's
            # skin region (see `output_skin_mask`); also over the source skin, for reference.
            src_lab, out_lab = rgb_to_lab(src), rgb_to_lab(output)
            skin = batch["skin_mask"].to(device).float()
            out_region = output_skin_mask(batch).to(device).float()
            src_skin, mass = masked_mean_lab(src_lab, skin)
            out_skin, out_mass = masked_mean_lab(out_lab, out_region)
            skin_delta = delta_e00(src_skin, out_skin, dim=1)
            source_region_delta = delta_e00(src_skin, masked_mean_lab(out_lab, skin)[0], dim=1)
            src_ita, out_ita = ita_degrees(src_skin), ita_degrees(out_skin)
            for i in range(size):
                if min(float(mass[i]), float(out_mass[i])) < MIN_SKIN_PIXELS:
                    continue
                bin_name = skin_tone_bin(src_ita[i])
                skin_by_bin.setdefault(bin_name, []).append(float(skin_delta[i]))
                source_region_by_bin.setdefault(bin_name, []).append(float(source_region_delta[i]))
                ita_shifts.append(abs(float(out_ita[i] - src_ita[i])))
            people_lighter += _people_lighter(src_lab, out_lab, skin, out_region, head)

            # Background: F(x) vs B(x) outside the head.
            reference = tgt
            if bg_key in batch and batch[bg_key].shape == src.shape:
                reference = batch[bg_key].to(device).float()
                if "is_cutface" in batch:
                    cut = batch["is_cutface"].to(device).view(-1, 1, 1, 1).bool()
                    reference = torch.where(cut, tgt, reference)
            region = (head < BACKGROUND_MAX_HEAD).float()
            per_pixel = delta_e00(out_lab, rgb_to_lab(reference), dim=1).unsqueeze(1)
            area = region.sum(dim=(1, 2, 3))
            per_image = (per_pixel * region).sum(dim=(1, 2, 3)) / area.clamp_min(1.0)
            background_scores += [float(v) for v, a in zip(per_image, area) if a > 0]
            if perceptual is not None:
                # The heads replaced by the reference: the distance sees the background only.
                outside = output * region + reference * (1.0 - region)
                distance = perceptual(outside.clamp(-1, 1), reference.clamp(-1, 1))
                perceptual_scores += [float(v) for v, a in zip(distance, area) if a > 0]
            for distribution in distributions:
                distribution.update(tgt.clamp(-1, 1), output.clamp(-1, 1))
    finally:
        net.train(was_training)

    if counted == 0:
        raise ValueError("evaluate_stylizer: no images in `batches`")
    by_bin = _bin_means(skin_by_bin)
    source_region_by_bin_means = _bin_means(source_region_by_bin)
    worst_bin = max(by_bin, key=by_bin.get) if by_bin else None
    metrics = {
        "l1_output_target": l1_output / counted,
        "l1_input_target": l1_input / counted,
        **{
            f"l1_{name}_{pair}": (sums[slot] / sums[2] if sums[2] > 0 else None)
            for name, sums in regional.items()
            for slot, pair in ((0, "output_target"), (1, "input_target"))
        },
        "skin_delta_e00_mean": _mean(list(by_bin.values())),
        "skin_delta_e00_by_bin": by_bin,
        "skin_delta_e00_worst": by_bin[worst_bin] if worst_bin else None,
        "skin_delta_e00_worst_bin": worst_bin,
        "skin_count_by_bin": {name: len(skin_by_bin[name]) for name in by_bin},
        "skin_delta_e00_source_region_mean": _mean(list(source_region_by_bin_means.values())),
        "skin_ita_shift_mean": _mean(ita_shifts),
        "whitewash_rate": _mean([float(lighter) for lighter in people_lighter]),
        "num_people": len(people_lighter),
        "background_delta_e00_mean": _mean(background_scores),
        "background_stlpips_mean": _mean(perceptual_scores),
        "num_images": counted,
        "num_skin_images": len(ita_shifts),
        "num_background_images": len(background_scores),
    }
    for distribution in distributions:
        metrics.update(distribution.compute())
    return metrics


def _mean(values: Sequence[float]) -> float | None:
    """Mean, or None for no values (JSON has no NaN: an empty measurement is null)."""
    return sum(values) / len(values) if values else None


def _people_lighter(
    src_lab: torch.Tensor,
    out_lab: torch.Tensor,
    skin: torch.Tensor,
    out_region: torch.Tensor,
    head: torch.Tensor,
) -> list[bool]:
    """Per person (`person_regions`) of each image: is the skin-tone class of F(x) lighter
    than x's? Each person's skin is their skin mask (input) / output skin region inside their
    own head; people with fewer than MIN_SKIN_PIXELS on either side are skipped."""
    lighter = []
    for i in range(src_lab.shape[0]):
        for region in person_regions(head[i]):
            region = region.to(skin.device, skin.dtype)
            src_mean, mass = masked_mean_lab(src_lab[i : i + 1], skin[i : i + 1] * region)
            out_mean, out_mass = masked_mean_lab(out_lab[i : i + 1], out_region[i : i + 1] * region)
            if min(float(mass[0]), float(out_mass[0])) < MIN_SKIN_PIXELS:
                continue
            before = skin_tone_class(ita_degrees(src_mean)[0])
            after = skin_tone_class(ita_degrees(out_mean)[0])
            lighter.append(after < before)
    return lighter
