"""The held-out set: which pairs F is measured on, and the measurements over its parts.

Plain frames are pair indices from `evaluate.index_base` on (far beyond any training index).
With `evaluate.stratified` and the embedded world, the indices are searched so that every
stratum of (framing x skin-tone bin) is represented: close-ups, half- and full-body single
portraits, two- and three-person frames, each with the main person in each of the six ITA
classes; the world's own scene parameters (`ProceduralWorld.draw_parameters`, cheap: no
rendering) say which stratum an index falls in. Other generators (the real networks, whose
faces' tones are not a parameter) take consecutive indices.

Unseen-landscape frames are CutFace pairs whose landscapes come from pictures no training bank
uses (`LandscapeBank(holdout=True)`, or the user's `evaluate.unseen_landscape_dir`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from portrait_toon.evaluation.metrics import SKIN_TONE_BINS, evaluate_stylizer, skin_tone_bin
from portrait_toon.synthesis.latents import pair_seed

__all__ = [
    "FRAMINGS",
    "PREFIXED_KEYS",
    "astronaut",
    "measure_sets",
    "scene_strata",
    "stratified_indices",
]

FRAMINGS = ("close_up", "half_body", "full_body", "two_people", "three_people")
# Face width / frame height of a single person: at least this is a close-up (the world's
# closeup_face_fraction), below FULL_BODY_FACE a full-body frame, half body in between.
CLOSE_UP_FACE = 0.3
FULL_BODY_FACE = 0.15
# Measurements repeated on the CutFace and unseen-landscape frames, under their prefix.
PREFIXED_KEYS = (
    "l1_output_target",
    "l1_input_target",
    "l1_background_output_target",
    "background_delta_e00_mean",
    "background_stlpips_mean",
)


def scene_strata(generator: nn.Module, base_seed: int, index: torch.Tensor) -> list | None:
    """(framing, skin-tone bin of the main person) of the pairs `index`, read from the
    embedded world's scene parameters; None for a generator that has none."""
    draw = getattr(getattr(generator, "world", None), "draw_parameters", None)
    if draw is None:
        return None
    scene, people = draw(pair_seed(base_seed, index, "latent"))
    count = scene["num_people"].tolist()
    face = (2.0 * people["radius"][:, 0]).tolist()  # radius: half the main face's width
    ita = people["ita"][:, 0].tolist()
    strata = []
    for people_count, face_fraction, tone in zip(count, face, ita):
        if people_count >= 3:
            framing = "three_people"
        elif people_count == 2:
            framing = "two_people"
        elif face_fraction >= CLOSE_UP_FACE:
            framing = "close_up"
        else:
            framing = "full_body" if face_fraction < FULL_BODY_FACE else "half_body"
        strata.append((framing, skin_tone_bin(tone)))
    return strata


def stratified_indices(
    generator: nn.Module,
    base_seed: int,
    first: int,
    count: int,
    search: int = 200_000,
    chunk: int = 4096,
) -> list[int] | None:
    """`count` pair indices from `first` on covering every (framing, skin-tone bin) stratum
    in turn (round robin: with count >= 30 each appears at least once); None when the
    generator exposes no scene parameters. Strata still empty after `search` indices are
    left out (the world's ranges may exclude them)."""
    # Diagonal order: consecutive strata differ in framing and in skin tone, so a short set
    # (debug) still spans both.
    bins = [name for name, _ in SKIN_TONE_BINS]
    strata = [
        (framing, bins[(f + offset) % len(bins)])
        for offset in range(len(bins))
        for f, framing in enumerate(FRAMINGS)
    ]
    per_stratum = max(1, math.ceil(count / len(strata)))
    found: dict[tuple[str, str], list[int]] = {stratum: [] for stratum in strata}
    for start in range(first, first + search, chunk):
        index = torch.arange(start, start + chunk, dtype=torch.int64)
        labels = scene_strata(generator, base_seed, index)
        if labels is None:
            return None
        for pair, stratum in zip(index.tolist(), labels):
            if len(found[stratum]) < per_stratum:
                found[stratum].append(pair)
        if all(len(v) >= per_stratum for v in found.values()):
            break
    chosen: list[int] = []
    for rank in range(per_stratum):
        chosen += [found[s][rank] for s in strata if len(found[s]) > rank]
    return chosen[:count]


@functools.cache
def _astronaut_uint8() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def astronaut(size: int) -> torch.Tensor:
    """scikit-image's `astronaut` (Eileen Collins, NASA, public domain), a real portrait
    photo: [1, 3, size, size] in [-1, 1] (area-resized)."""
    import cv2

    image = cv2.resize(_astronaut_uint8(), (size, size), interpolation=cv2.INTER_AREA)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (tensor / 127.5 - 1.0).unsqueeze(0)


def measure_sets(
    net: nn.Module,
    sets: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    perceptual: nn.Module | None = None,
    make_distributions: Callable[[], Sequence[Any]] = tuple,
) -> dict[str, Any]:
    """`evaluate_stylizer` on the plain frames (`sets["plain"]`, with the distribution
    distances `make_distributions()` returns), then PREFIXED_KEYS on each other set
    (`cutface`, `unseen_landscape`) under `<name>_`."""
    metrics = dict(
        evaluate_stylizer(
            net, sets["plain"], perceptual=perceptual, distributions=make_distributions()
        )
    )
    for name, batches in sets.items():
        if name == "plain" or not batches:
            continue
        part = evaluate_stylizer(net, batches, perceptual=perceptual)
        metrics.update({f"{name}_{key}": part[key] for key in PREFIXED_KEYS if key in part})
    return metrics
