"""demo_report.png: sections follow the pairs' framing and skin tone, the file is a real PNG
showing the given images, and bad input is a clear error."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from portrait_toon.evaluation.report import items_from_batches, plan_sections, save_demo_report
from portrait_toon.synthesis.color import lab_to_rgb

SIZE = 48


def frame(ita: float, heads: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey frame with square heads (top, left, side) of the given skin ITA."""
    b_star = 15.0
    skin_lab = torch.tensor([50 + b_star * math.tan(math.radians(ita)), 10.0, b_star])
    lab = torch.tensor([55.0, 0.0, 5.0]).view(3, 1, 1).repeat(1, SIZE, SIZE)
    mask = torch.zeros(1, SIZE, SIZE)
    for top, left, side in heads:
        mask[:, top : top + side, left : left + side] = 1
    lab = lab * (1 - mask) + skin_lab.view(3, 1, 1) * mask
    return lab_to_rgb(lab.unsqueeze(0))[0], mask


def batch(specs: list[tuple[float, list[tuple[int, int, int]], bool]]) -> dict[str, torch.Tensor]:
    frames = [frame(ita, heads) for ita, heads, _ in specs]
    src = torch.stack([f[0] for f in frames])
    mask = torch.stack([f[1] for f in frames])
    return {
        "src": src,
        "tgt": (src * 0.8).clamp(-1, 1),
        "output": (src * 0.9).clamp(-1, 1),
        "head_mask": mask,
        "skin_mask": mask.clone(),
        "is_cutface": torch.tensor([cut for *_, cut in specs]),
    }


CLOSE = [(4, 4, 30)]
FULL = [(2, 20, 6)]
GROUP = [(2, 4, 6), (2, 30, 6)]


def test_sections_by_framing_and_tone() -> None:
    rows = [
        batch([(50, CLOSE, False), (-40, FULL, False), (10, GROUP, False)]),
        batch([(30, FULL, False), (0, CLOSE, True)]),
    ]
    items = items_from_batches(rows)
    assert [i.framing for i in items] == [
        "close_up", "full_body", "multi_person", "full_body", "cutface"
    ]  # fmt: skip
    sections = dict(plan_sections(items))
    tones = next(v for k, v in sections.items() if k.startswith("Skin tones"))
    assert [round(i.ita) for i in tones] == [50, 30, 10, -40]  # light to dark, no CutFace
    assert len(sections["Close-ups"]) == 1 and len(sections["Several people"]) == 1
    assert len(sections["Full body"]) == 2
    assert len(next(v for k, v in sections.items() if k.startswith("CutFace"))) == 1
    assert items[0].skin_delta_e is not None and items[0].skin_delta_e > 0


def test_report_png_shows_the_images(tmp_path: Path) -> None:
    rows = [batch([(50, CLOSE, False), (-40, FULL, False), (10, GROUP, False), (0, CLOSE, True)])]
    path = save_demo_report(tmp_path / "demo_report.png", rows)
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert image.shape[0] > 4 * 128 and image.shape[1] > 3 * 128  # upscaled to >= 128 px panels
    # the first input (upscaled nearest from 48 px) appears somewhere as a block of its colour
    skin = np.array(
        cv2.resize(((rows[0]["src"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(),
                   (128, 128), interpolation=cv2.INTER_NEAREST)[40, 40]
    )  # fmt: skip
    assert (np.abs(image.astype(int) - skin).sum(axis=2) == 0).sum() > 1000
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_or_malformed_rows() -> None:
    with pytest.raises(ValueError, match="no pairs"):
        save_demo_report("unused.png", [])
    with pytest.raises(KeyError, match="output"):
        items_from_batches([{"src": torch.zeros(1, 3, 8, 8)}])
