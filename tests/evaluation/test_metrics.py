"""Evaluation metrics: CIEDE2000 against Sharma et al.'s published pairs, ITA, skin-tone bins,
and evaluate_stylizer on nets whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from portrait_toon.evaluation.metrics import (
    SKIN_TONE_BINS,
    delta_e00,
    evaluate_stylizer,
    ita_degrees,
    output_skin_mask,
    person_regions,
    rgb_to_lab,
    skin_tone_bin,
)
from portrait_toon.nets.perceptual import MissingPerceptualWeightsError, ShiftTolerantLPIPS
from portrait_toon.synthesis.color import lab_to_rgb

# Sharma, Wu & Dalal (2005), Table 1: (Lab1, Lab2, ΔE00), pairs 1, 2, 3, 7, 17-20, 25.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


def test_delta_e00_matches_sharma_table() -> None:
    lab1 = torch.tensor([p[0] for p in SHARMA_PAIRS], dtype=torch.float64)
    lab2 = torch.tensor([p[1] for p in SHARMA_PAIRS], dtype=torch.float64)
    expected = torch.tensor([p[2] for p in SHARMA_PAIRS], dtype=torch.float64)
    torch.testing.assert_close(delta_e00(lab1, lab2, dim=1), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(delta_e00(lab2, lab1, dim=1), expected, atol=1e-4, rtol=0)


def test_ita_of_known_lab_values() -> None:
    lab = torch.tensor([[50.0, 10.0, 20.0], [60.0, 5.0, 10.0], [40.0, 5.0, 10.0], [70.0, 0, 20.0]])
    expected = torch.tensor([0.0, 45.0, -45.0, math.degrees(math.atan(1.0))])
    torch.testing.assert_close(ita_degrees(lab), expected)


@pytest.mark.parametrize(
    ("value", "name"),
    [(70, "very_light"), (55.5, "very_light"), (55, "light"), (41.5, "light"), (30, "intermediate"),
     (20, "tan"), (0, "brown"), (-29, "brown"), (-30, "dark"), (-80, "dark")],
)  # fmt: skip
def test_skin_tone_bins(value: float, name: str) -> None:
    assert skin_tone_bin(value) == name
    assert name in dict(SKIN_TONE_BINS)


def test_skin_tone_bin_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        skin_tone_bin(float("nan"))


def skin_batch(itas: list[float], size: int = 16) -> dict[str, torch.Tensor]:
    """Images whose left half is skin of the given ITA (b* = 15) on a grey-green background;
    the head is the left half; the background stylizer's output is the background darkened."""
    count = len(itas)
    b_star = 15.0
    lab = torch.zeros(count, 3, size, size)
    for i, angle in enumerate(itas):
        lab[i, 0] = 50 + b_star * math.tan(math.radians(angle))
        lab[i, 1], lab[i, 2] = 10.0, b_star
    background_lab = torch.tensor([60.0, -20.0, 10.0]).view(1, 3, 1, 1)
    head = torch.zeros(count, 1, size, size)
    head[..., : size // 2] = 1.0
    lab = lab * head + background_lab * (1 - head)
    src = lab_to_rgb(lab)
    stylised_background = (src - 0.2).clamp(-1, 1)
    tgt = src * head + stylised_background * (1 - head)
    return {
        "src": src,
        "tgt": tgt,
        "skin_mask": head.clone(),
        "head_mask": head,
        "background": stylised_background,
        "is_cutface": torch.zeros(count, dtype=torch.bool),
    }


class Identity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Whitening(Identity):
    """Paints every head pixel the character's light skin: the failure colour reflection fixes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        light = lab_to_rgb(torch.tensor([85.0, 8.0, 12.0]).view(1, 3, 1, 1)).expand_as(x).clone()
        out = x.clone()
        out[..., : x.shape[-1] // 2] = light[..., : x.shape[-1] // 2]
        return out


def test_identity_net() -> None:
    batches = [skin_batch([-45.0, 0.0, 20.0]), skin_batch([35.0, 50.0, 60.0])]
    result = evaluate_stylizer(Identity(), batches)
    assert result["num_images"] == 6 and result["num_skin_images"] == 6
    assert result["l1_output_target"] == pytest.approx(result["l1_input_target"])
    assert result["l1_input_target"] > 0.05
    assert result["skin_delta_e00_mean"] < 0.05
    assert set(result["skin_delta_e00_by_bin"]) == {n for n, _ in SKIN_TONE_BINS}
    # the identity keeps the photo's background, B darkened it: a clear colour difference
    assert result["background_delta_e00_mean"] > 5


def test_whitening_net_is_caught_and_worst_on_dark_skin() -> None:
    result = evaluate_stylizer(Whitening(), [skin_batch([-45.0, 0.0, 20.0, 35.0, 50.0, 60.0])])
    by_bin = result["skin_delta_e00_by_bin"]
    assert result["skin_delta_e00_mean"] > 20
    assert by_bin["dark"] > by_bin["brown"] > by_bin["tan"] > by_bin["very_light"]
    assert result["skin_ita_shift_mean"] > 30


def test_output_skin_is_measured_where_the_character_has_skin() -> None:
    """The target's head is the character's (another face shape): a perfect F has the input's
    skin tone only over the character's skin, not over the photo's skin mask."""
    batch = skin_batch([-45.0, 0.0, 35.0, 60.0])
    character_skin = torch.zeros_like(batch["skin_mask"])
    character_skin[..., 2:-2, 2:6] = 1.0  # inside the photo's skin (the left half)
    # The target: the input's skin colour on the character's skin, dark hair around it.
    hair = lab_to_rgb(torch.tensor([20.0, 5.0, -10.0]).view(1, 3, 1, 1))
    head = batch["head_mask"]
    batch["tgt"] = torch.where(
        (head > 0) & (character_skin == 0), hair.expand_as(batch["src"]), batch["tgt"]
    )
    batch["character_skin_mask"] = character_skin

    class Perfect(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return batch["tgt"]

    perfect = evaluate_stylizer(Perfect(), [batch])
    assert perfect["skin_delta_e00_mean"] < 0.05
    assert perfect["skin_delta_e00_source_region_mean"] > 10  # the hair is in the photo's skin
    identity = evaluate_stylizer(Identity(), [batch])
    assert identity["skin_delta_e00_mean"] < 0.05 and identity["l1_output_target"] > 0.1
    # CutFace pairs: the tiles moved the heads, the source skin mask is used instead.
    batch["is_cutface"] = torch.ones(4, dtype=torch.bool)
    assert torch.equal(output_skin_mask(batch), batch["skin_mask"])
    cut = evaluate_stylizer(Perfect(), [batch])
    assert cut["skin_delta_e00_mean"] == pytest.approx(cut["skin_delta_e00_source_region_mean"])
    del batch["character_skin_mask"]
    assert torch.equal(output_skin_mask(batch), batch["skin_mask"])


def test_output_skin_leaves_out_the_border_pixel_at_128() -> None:
    """At 128 px the output's skin is read one pixel inside the character's skin border (the
    face outline's blur is not a skin tone); at 16 px there is nothing to spare."""
    batch = skin_batch([0.0], size=128)
    character_skin = torch.zeros_like(batch["skin_mask"])
    character_skin[..., 20:30, 10:20] = 1.0
    batch["character_skin_mask"] = character_skin
    region = output_skin_mask(batch)
    assert float(region.sum()) == 64 and float(region[..., 21:29, 11:19].sum()) == 64
    small = skin_batch([0.0])
    small["character_skin_mask"] = torch.zeros_like(small["skin_mask"])
    small["character_skin_mask"][..., 4:8, 2:6] = 1.0
    assert torch.equal(output_skin_mask(small), small["character_skin_mask"])


def test_l1_is_split_into_head_and_background() -> None:
    batch = skin_batch([0.0, 30.0])
    head = batch["head_mask"]
    expected_background = float(
        ((batch["src"] - batch["tgt"]).abs().mean(1, keepdim=True) * (1 - head)).sum()
        / (1 - head).sum()
    )

    class FixesBackgroundOnly(Identity):
        """Exact outside the head, off by 0.1 inside it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return batch["tgt"] * (1 - head) + (x - 0.1) * head

    identity = evaluate_stylizer(Identity(), [batch])
    assert identity["l1_head_input_target"] == 0  # the target keeps the head as is
    assert identity["l1_background_input_target"] == pytest.approx(expected_background)
    assert expected_background > 0.1
    assert identity["l1_background_output_target"] == pytest.approx(expected_background)
    fixed = evaluate_stylizer(FixesBackgroundOnly(), [batch])
    assert fixed["l1_head_output_target"] == pytest.approx(0.1)
    assert fixed["l1_background_output_target"] == 0
    assert fixed["l1_background_input_target"] == pytest.approx(expected_background)


def test_background_is_measured_against_b_of_x() -> None:
    batch = skin_batch([0.0, 30.0])

    class Perfect(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return batch["tgt"]

    result = evaluate_stylizer(Perfect(), [batch])
    assert result["l1_output_target"] == 0
    assert result["background_delta_e00_mean"] < 1e-3
    # without the stage key the target stands in for B(x) outside the head: same answer
    del batch["background"]
    assert evaluate_stylizer(Perfect(), [batch])["background_delta_e00_mean"] < 1e-3


def test_rgb_to_lab_range() -> None:
    lab = rgb_to_lab(torch.tensor([[-1.0, 1.0]]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    torch.testing.assert_close(lab[0, 0, 0], torch.tensor([0.0, 100.0]), atol=1e-3, rtol=0)


def test_missing_keys_and_empty_input() -> None:
    with pytest.raises(KeyError, match="skin_mask"):
        evaluate_stylizer(
            Identity(),
            [
                {
                    "src": torch.zeros(1, 3, 8, 8),
                    "tgt": torch.zeros(1, 3, 8, 8),
                    "head_mask": torch.zeros(1, 1, 8, 8),
                }
            ],
        )
    with pytest.raises(ValueError, match="no images"):
        evaluate_stylizer(Identity(), [])


def test_whitewash_rate_of_a_whitening_net_is_high_and_of_the_identity_zero() -> None:
    """Whitening paints every head the character's very light skin (ITA ~71): each person of a
    darker class moves one or more classes lighter; the very light one stays in its class."""
    batch = skin_batch([-45.0, 0.0, 20.0, 35.0, 50.0, 60.0])
    white = evaluate_stylizer(Whitening(), [batch])
    assert white["num_people"] == 6
    assert white["whitewash_rate"] == pytest.approx(5 / 6)
    assert white["skin_delta_e00_worst_bin"] == "dark"
    assert white["skin_delta_e00_worst"] == max(white["skin_delta_e00_by_bin"].values())
    identity = evaluate_stylizer(Identity(), [batch])
    assert identity["whitewash_rate"] == 0 and identity["num_people"] == 6


def test_whitewash_rate_counts_people_not_images() -> None:
    """Two heads in one frame are two people: whitening only one of them is a rate of 1/2."""
    batch = skin_batch([-45.0], size=32)
    head = torch.zeros(1, 1, 32, 32)
    head[..., 2:14, 2:14] = 1.0
    head[..., 18:30, 18:30] = 1.0
    batch["head_mask"], batch["skin_mask"] = head, head.clone()
    assert len(person_regions(head[0])) == 2
    specks = head.clone()
    specks[..., 0, 31] = 1.0  # one pixel: no person
    assert len(person_regions(specks[0])) == 2

    class WhitensTheFirst(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            light = lab_to_rgb(torch.tensor([85.0, 8.0, 12.0]).view(1, 3, 1, 1))
            return torch.where(head.bool() & (torch.arange(32) < 16), light, x)

    assert evaluate_stylizer(WhitensTheFirst(), [batch])["whitewash_rate"] == pytest.approx(0.5)


def test_background_stlpips_sees_the_background_only() -> None:
    """ST-LPIPS between F(x) and B(x) with B(x) pasted over the heads: 0 for a perfect F, > 0
    for the identity (B darkened the background), blind to what F does inside the heads."""
    try:
        perceptual = ShiftTolerantLPIPS()
    except MissingPerceptualWeightsError as error:
        pytest.skip(str(error))
    batch = skin_batch([-45.0, 30.0], size=32)

    class Perfect(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return batch["tgt"]

    class PerfectBackgroundNoisyHead(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            noise = torch.rand_like(x) * batch["head_mask"]
            return (batch["tgt"] + noise).clamp(-1, 1)

    perfect = evaluate_stylizer(Perfect(), [batch], perceptual=perceptual)
    identity = evaluate_stylizer(Identity(), [batch], perceptual=perceptual)
    head_only = evaluate_stylizer(PerfectBackgroundNoisyHead(), [batch], perceptual=perceptual)
    assert perfect["background_stlpips_mean"] < 1e-6
    assert head_only["background_stlpips_mean"] < 1e-6
    assert identity["background_stlpips_mean"] > 0.01
    assert evaluate_stylizer(Identity(), [batch])["background_stlpips_mean"] is None
