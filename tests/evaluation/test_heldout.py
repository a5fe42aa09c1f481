"""The held-out set (evaluation/heldout.py): stratified frames cover every framing x skin-tone
class; unseen-landscape pictures are never in a training bank; the astronaut photo."""

from __future__ import annotations

import torch
from torch import nn

from portrait_toon.evaluation.heldout import (
    FRAMINGS,
    astronaut,
    scene_strata,
    stratified_indices,
)
from portrait_toon.evaluation.metrics import SKIN_TONE_BINS
from portrait_toon.synthesis.landscapes import (
    BUILTIN_LANDSCAPES,
    HELDOUT_LANDSCAPES,
    LandscapeBank,
)
from portrait_toon.synthesis.procedural import ProceduralGenerator


def test_stratified_indices_cover_every_framing_and_skin_tone() -> None:
    generator = ProceduralGenerator(64)
    every = {(framing, name) for framing in FRAMINGS for name, _ in SKIN_TONE_BINS}
    chosen = stratified_indices(generator, base_seed=0, first=10**9, count=len(every))
    assert len(chosen) == len(every) == len(set(chosen)) and min(chosen) >= 10**9
    assert set(scene_strata(generator, 0, torch.tensor(chosen))) == every
    # a short set still spans framings and tones; the same call gives the same set
    short = stratified_indices(generator, base_seed=0, first=10**9, count=5)
    strata = scene_strata(generator, 0, torch.tensor(short))
    assert len({f for f, _ in strata}) == 5 and len({b for _, b in strata}) == 5
    assert short == stratified_indices(generator, base_seed=0, first=10**9, count=5)


def test_generators_without_scene_parameters_are_not_stratified() -> None:
    assert stratified_indices(nn.Identity(), base_seed=0, first=0, count=4) is None


def test_unseen_landscapes_are_not_in_the_training_bank() -> None:
    assert not set(HELDOUT_LANDSCAPES) & set(BUILTIN_LANDSCAPES)
    assert LandscapeBank().names == list(BUILTIN_LANDSCAPES)
    bank = LandscapeBank(holdout=True)
    assert bank.names == list(HELDOUT_LANDSCAPES)
    picture = bank.sample(3, (24, 40))
    assert picture.dtype == torch.uint8 and picture.shape == (3, 24, 40)


def test_astronaut_is_a_real_photo_in_range() -> None:
    photo = astronaut(48)
    assert photo.shape == (1, 3, 48, 48)
    assert -1.0 <= float(photo.min()) < -0.5 and 0.5 < float(photo.max()) <= 1.0
