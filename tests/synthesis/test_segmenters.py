"""BiSeNetSegmenter on tiny inputs: ImageNet-normalised parse at parse_size, labels at the image
size, head/skin masks that follow the class sets, loading and missing-file errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from portrait_toon.checkpoints import CheckpointMismatchError, MissingWeightsError
from portrait_toon.nets.bisenet import HEAD_CLASS_IDS, IMAGENET_MEAN, IMAGENET_STD, SKIN_CLASS_IDS
from portrait_toon.synthesis.parsing import head_mask, skin_mask
from portrait_toon.synthesis.segmenters import BiSeNetSegmenter, union_head_labels


@pytest.fixture(scope="module")
def segmenter() -> BiSeNetSegmenter:
    return BiSeNetSegmenter(None, parse_size=64, allow_random_init=True, init_seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_labels_at_image_size_from_the_normalised_parse(segmenter, images):
    labels = segmenter.parse(images)
    assert labels.shape == (2, 48, 40) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) <= 18
    # the same as the net's main head on ImageNet-normalised RGB resized to parse_size,
    # logits brought back to the image size before the argmax
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.interpolate(
        ((images + 1) / 2 - mean) / std, size=(64, 64), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        logits = F.interpolate(
            segmenter.net.main_logits_lowres(x), size=(64, 64), mode="bilinear", align_corners=True
        )
        logits = F.interpolate(
            logits, size=(48, 40), mode="bilinear", align_corners=False, antialias=True
        )
    expected = logits.argmax(1)
    assert (labels == expected).float().mean() > 0.99  # ties aside (folded BN rounding)
    # domain only labels the call: a real parser parses the pixels
    assert torch.equal(segmenter.parse(images, latents=object(), domain="character"), labels)
    with pytest.raises(ValueError, match="domain"):
        segmenter.parse(images, domain="cartoon")


def test_head_and_skin_masks_follow_the_class_sets(segmenter, images):
    labels = segmenter.parse(images)
    present = set(labels.unique().tolist())
    # the seeded random parser yields head and non-head classes alike: a meaningful check
    assert present & set(HEAD_CLASS_IDS) and present - set(HEAD_CLASS_IDS)
    head = head_mask(labels, HEAD_CLASS_IDS, dilate_px=0, feather_px=0)[:, 0]
    in_head = torch.isin(labels, torch.tensor(HEAD_CLASS_IDS))
    assert torch.equal(head == 1, in_head) and torch.equal(head == 0, ~in_head)
    assert not bool(head[(labels == 0) | (labels == 16)].any())  # never background or cloth
    skin = skin_mask(labels, SKIN_CLASS_IDS)[:, 0]
    assert torch.equal(skin == 1, (labels == 1) | (labels == 10))


def test_loads_a_state_dict_file_and_rejects_a_wrong_one(segmenter, images, tmp_path):
    torch.save(segmenter.net.state_dict(), tmp_path / "79999_iter.pth")
    loaded = BiSeNetSegmenter(str(tmp_path), parse_size=64)
    assert torch.equal(loaded.parse(images), segmenter.parse(images))
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="other.pth"):
        BiSeNetSegmenter(str(tmp_path), filename="other.pth")


def test_missing_file_names_it_and_make_weights(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        BiSeNetSegmenter(str(tmp_path))
    assert "79999_iter.pth" in str(error.value) and "make weights" in str(error.value)


def test_frozen_eval_and_folded(segmenter):
    segmenter.train()
    assert not segmenter.training and not segmenter.net.training
    assert not any(p.requires_grad for p in segmenter.parameters())
    assert segmenter.net._bn_folded  # folding survives the train() call


def test_union_adds_the_character_head_outside_the_source_head():
    source = torch.tensor([[[0, 1, 17, 16]]])
    character = torch.tensor([[[17, 4, 0, 1]]])
    union = union_head_labels(source, character)
    # background -> the character's hair; source head kept; cloth -> the character's skin
    assert union.tolist() == [[[17, 1, 17, 1]]]
    with pytest.raises(ValueError, match="shape"):
        union_head_labels(source, character[..., :2])


def test_bf16_labels_mostly_agree_with_float32(segmenter, images):
    half = BiSeNetSegmenter(None, parse_size=64, allow_random_init=True, init_seed=0, bf16=True)
    labels = half.parse(images)
    assert labels.shape == (2, 48, 40) and labels.dtype == torch.int64
    assert (labels == segmenter.parse(images)).float().mean() > 0.9
