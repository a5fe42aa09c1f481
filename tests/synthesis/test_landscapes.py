"""LandscapeBank: built-in pictures and user folders, deterministic random crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_toon.synthesis.landscapes import BUILTIN_LANDSCAPES, LandscapeBank


@pytest.fixture(scope="module")
def bank() -> LandscapeBank:
    return LandscapeBank()


def test_builtin_pictures_load(bank):
    assert len(bank) == len(BUILTIN_LANDSCAPES) >= 4
    assert bank.names == list(BUILTIN_LANDSCAPES)


def test_sample_shape_dtype_and_determinism(bank):
    crop = bank.sample(11, (40, 56))
    assert crop.shape == (3, 40, 56) and crop.dtype == torch.uint8
    assert torch.equal(crop, bank.sample(11, (40, 56)))
    others = [bank.sample(seed, (40, 56)) for seed in range(12, 20)]
    assert all(not torch.equal(crop, other) for other in others)
    assert float(crop.float().std()) > 5.0  # real picture content, not a flat fill
    batch = bank.sample_batch(torch.tensor([11, 12]), (40, 56))
    assert batch.shape == (2, 3, 40, 56)
    assert torch.equal(batch[0], crop)


def test_crop_is_from_the_picture(tmp_path):
    # A picture whose left half is red and right half blue: crops hold only those colours
    # (up to resize blending at the border), never anything else.
    picture = np.zeros((120, 200, 3), dtype=np.uint8)
    picture[:, :100, 0] = 255
    picture[:, 100:, 2] = 255
    Image.fromarray(picture).save(tmp_path / "split.png")
    bank = LandscapeBank(tmp_path, scale_range=(0.3, 0.6))
    assert bank.names == ["split.png"]
    crops = [bank.sample(seed, (24, 24)).float() for seed in range(30)]
    for crop in crops:
        assert float(crop[1].max()) == 0.0  # no green anywhere
        assert bool(((crop[0] + crop[2]) > 250).all())
    # Unflipped crops keep red on the left; flipped crops (p = 0.5) put it on the right.
    mixed = [c for c in crops if float(c[0].mean()) > 20 and float(c[2].mean()) > 20]
    orientations = {float(c[0, :, 0].mean()) > float(c[0, :, -1].mean()) for c in mixed}
    assert orientations == {True, False}


def test_user_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="landscape_dir"):
        len(LandscapeBank(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="holds no images"):
        len(LandscapeBank(tmp_path))
    with pytest.raises(ValueError, match="unknown built-in"):
        LandscapeBank(builtin=("moon",))
    with pytest.raises(ValueError, match="scale_range"):
        LandscapeBank(scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="size"):
        LandscapeBank().sample(0, (0, 10))
