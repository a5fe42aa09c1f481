"""demo_report.png: what the trained F does on held-out inputs, the first thing a user sees.

Sections of (input | target | F(x)) triplets with captions: the whole skin-tone range sorted
light to dark, close-ups, full-body frames, multi-person frames, and CutFace landscapes. The
framing is read off the head mask (area and number of separate heads), so any pair source works.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from portrait_toon.evaluation.metrics import (
    BACKGROUND_MAX_HEAD,
    MIN_SKIN_PIXELS,
    delta_e00,
    ita_degrees,
    masked_mean_lab,
    output_skin_mask,
    person_regions,
    rgb_to_lab,
    skin_tone_bin,
)
from portrait_toon.utils.files import atomic_write_png
from portrait_toon.utils.grid import label_image, tensor_to_uint8

log = logging.getLogger(__name__)

# Framing from the head mask: a head covering this much of the frame is a close-up.
CLOSEUP_HEAD_FRACTION = 0.10
TRIPLET_NAMES = ("input", "target", "F(x)")

_BACKGROUND = (28, 28, 32)
_SECTION = (58, 62, 92)
_CAPTION = (44, 44, 52)
_TITLE = (18, 18, 22)
_GAP = 4  # pixels between the three images of a triplet
_SPACING = 14  # pixels between triplets and around the page


@dataclass
class ReportItem:
    """One held-out pair with F's output and what the report says about it."""

    src: torch.Tensor  # [3,H,W] in [-1,1]
    tgt: torch.Tensor | None
    out: torch.Tensor
    head_mask: torch.Tensor | None = None  # [1,H,W]
    skin_mask: torch.Tensor | None = None
    output_skin_mask: torch.Tensor | None = None  # where the output's skin is measured
    is_cutface: bool = False
    ita: float | None = None
    skin_delta_e: float | None = None
    background_delta_e: float | None = None
    num_heads: int = 0
    head_fraction: float = 0.0

    @property
    def framing(self) -> str:
        if self.is_cutface:
            return "cutface"
        if self.num_heads >= 2:
            return "multi_person"
        return "close_up" if self.head_fraction >= CLOSEUP_HEAD_FRACTION else "full_body"


def _count_heads(head_mask: torch.Tensor) -> tuple[int, float]:
    """Number of people (`person_regions`) and the head mask's share of the frame."""
    return len(person_regions(head_mask)), float((head_mask > 0.5).float().mean())


def _measure(item: ReportItem) -> None:
    src, out = item.src.unsqueeze(0).float(), item.out.unsqueeze(0).float()
    src_lab, out_lab = rgb_to_lab(src), rgb_to_lab(out)
    if item.skin_mask is not None:
        skin = item.skin_mask.unsqueeze(0).float()
        src_skin, mass = masked_mean_lab(src_lab, skin)
        out_region = skin if item.output_skin_mask is None else item.output_skin_mask[None]
        out_skin, out_mass = masked_mean_lab(out_lab, out_region.float())
        if min(float(mass[0]), float(out_mass[0])) >= MIN_SKIN_PIXELS:
            item.ita = float(ita_degrees(src_skin)[0])
            item.skin_delta_e = float(delta_e00(src_skin, out_skin, dim=1)[0])
    if item.head_mask is not None:
        item.num_heads, item.head_fraction = _count_heads(item.head_mask)
        if item.tgt is not None:
            region = (item.head_mask.unsqueeze(0) < BACKGROUND_MAX_HEAD).float()
            if float(region.sum()) > 0:
                per_pixel = delta_e00(out_lab, rgb_to_lab(item.tgt.unsqueeze(0).float()), dim=1)
                item.background_delta_e = float((per_pixel * region[:, 0]).sum() / region.sum())


def items_from_batches(rows: Iterable[Mapping[str, torch.Tensor]]) -> list[ReportItem]:
    """Split batch dicts (`src`, `tgt`, `output` or `out`, masks, `is_cutface`) into items."""
    items = []
    for number, batch in enumerate(rows):
        output = batch.get("output", batch.get("out"))
        if output is None or "src" not in batch:
            raise KeyError(f"demo report row {number}: needs 'src' and 'output' (or 'out')")
        src = batch["src"]
        if src.ndim == 3:  # a single pair rather than a batch
            batch = {k: (v.unsqueeze(0) if torch.is_tensor(v) else v) for k, v in batch.items()}
            output, src = output.unsqueeze(0), src.unsqueeze(0)
        cut = batch.get("is_cutface")
        out_skin = output_skin_mask(batch) if "skin_mask" in batch else None
        for i in range(src.shape[0]):
            item = ReportItem(
                src=src[i].detach().float().cpu(),
                tgt=batch["tgt"][i].detach().float().cpu() if "tgt" in batch else None,
                out=output[i].detach().float().cpu(),
                head_mask=batch["head_mask"][i].detach().cpu() if "head_mask" in batch else None,
                skin_mask=batch["skin_mask"][i].detach().cpu() if "skin_mask" in batch else None,
                output_skin_mask=out_skin[i].detach().cpu() if out_skin is not None else None,
                is_cutface=bool(cut[i]) if cut is not None else False,
            )
            _measure(item)
            items.append(item)
    return items


def _spread(items: Sequence[ReportItem], count: int) -> list[ReportItem]:
    """`count` items evenly spaced through `items` (all of them if there are fewer)."""
    if len(items) <= count:
        return list(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[p] for p in positions]


def plan_sections(
    items: Sequence[ReportItem], per_section: int = 6, skin_tone_count: int = 12
) -> list[tuple[str, list[ReportItem]]]:
    """The report's sections, in order; empty ones are left out."""
    plain = [item for item in items if not item.is_cutface]
    with_skin = sorted((i for i in plain if i.ita is not None), key=lambda i: -float(i.ita))
    sections = [
        (
            "Skin tones, light to dark (sorted by the input's ITA)",
            _spread(with_skin, skin_tone_count),
        )
    ]
    by_framing = {"close_up": [], "full_body": [], "multi_person": []}
    for item in plain:
        by_framing[item.framing].append(item)
    sections += [
        ("Close-ups", by_framing["close_up"][:per_section]),
        ("Full body", by_framing["full_body"][:per_section]),
        ("Several people", by_framing["multi_person"][:per_section]),
        (
            "CutFace: landscape photo with pasted heads",
            [i for i in items if i.is_cutface][:per_section],
        ),
    ]
    return [(title, chosen) for title, chosen in sections if chosen]


def _caption(item: ReportItem) -> str:
    parts = []
    if item.ita is not None and not item.is_cutface:
        parts.append(f"ITA {item.ita:+.0f} {skin_tone_bin(item.ita)}")
    if item.skin_delta_e is not None:
        parts.append(f"skin dE {item.skin_delta_e:.1f}")
    if item.background_delta_e is not None and (item.is_cutface or item.ita is None):
        parts.append(f"bg dE {item.background_delta_e:.1f}")
    if item.tgt is not None:
        parts.append(f"L1 {float((item.out - item.tgt).abs().mean()):.3f}")
    return "  ".join(parts)


def _image(tensor: torch.Tensor, size: int) -> np.ndarray:
    image = tensor_to_uint8(tensor)
    if image.shape[0] != size:
        width = round(image.shape[1] * size / image.shape[0])
        interpolation = cv2.INTER_NEAREST if size > image.shape[0] else cv2.INTER_AREA
        image = cv2.resize(image, (width, size), interpolation=interpolation)
    return image


def _triplet(item: ReportItem, size: int, with_names: bool) -> np.ndarray:
    panels = [item.src, item.tgt if item.tgt is not None else item.src * 0, item.out]
    images = []
    for name, panel in zip(TRIPLET_NAMES, panels):
        image = _image(panel, size)
        images.append(label_image(image, name, background=_CAPTION) if with_names else image)
    gap = np.full((images[0].shape[0], _GAP, 3), _BACKGROUND, dtype=np.uint8)
    row = np.concatenate([images[0], gap, images[1], gap, images[2]], axis=1)
    return label_image(row, _caption(item), position="bottom", background=_CAPTION)


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = _BACKGROUND
    canvas[: image.shape[0], : image.shape[1]] = image
    return canvas


def _summary(items: Sequence[ReportItem]) -> str:
    pairs = [i for i in items if i.tgt is not None]
    if not pairs:
        return ""
    l1_out = np.mean([float((i.out - i.tgt).abs().mean()) for i in pairs])
    l1_in = np.mean([float((i.src - i.tgt).abs().mean()) for i in pairs])
    skin = [i.skin_delta_e for i in items if i.skin_delta_e is not None and not i.is_cutface]
    text = f"{len(items)} held-out pairs   L1(F(x), y) {l1_out:.3f} vs L1(x, y) {l1_in:.3f}"
    if skin:
        text += f"   mean skin dE00 input->F(x) {np.mean(skin):.2f}"
    return text


def save_demo_report(
    path: str | Path,
    rows: Iterable[Mapping[str, torch.Tensor]] | Sequence[ReportItem],
    title: str = "portrait_toon: F on held-out inputs",
    per_section: int = 6,
    skin_tone_count: int = 12,
    triplets_per_line: int = 3,
    image_size: int | None = None,
) -> Path:
    """Render the report and write it as PNG (atomically); returns the path.

    Args:
        rows: batch dicts as the held-out evaluation makes them (`src`, `tgt`, `output`,
            `head_mask`, `skin_mask`, `is_cutface`; [B,...] or single pairs), or ReportItems.
        per_section, skin_tone_count: how many pairs each section shows.
        triplets_per_line: (input | target | F(x)) triplets side by side.
        image_size: panel height in px; default the images' own, at least 128.
    """
    rows = list(rows)
    items = rows if rows and isinstance(rows[0], ReportItem) else items_from_batches(rows)
    if not items:
        raise ValueError(f"save_demo_report({path}): no pairs to show")
    size = image_size or max(128, int(items[0].src.shape[-2]))
    sections = plan_sections(items, per_section=per_section, skin_tone_count=skin_tone_count)

    blocks: list[np.ndarray] = []
    for section_title, chosen in sections:
        triplets = [
            _triplet(item, size, with_names=n < triplets_per_line) for n, item in enumerate(chosen)
        ]
        cell_h = max(t.shape[0] for t in triplets)
        cell_w = max(t.shape[1] for t in triplets)
        lines = []
        for start in range(0, len(triplets), triplets_per_line):
            line = []
            for triplet in triplets[start : start + triplets_per_line]:
                line.append(_pad_to(triplet, cell_h, cell_w))
                line.append(np.full((cell_h, _SPACING, 3), _BACKGROUND, dtype=np.uint8))
            lines.append(np.concatenate(line[:-1], axis=1))
        width = max(line.shape[1] for line in lines)
        body = [
            part
            for line in lines
            for part in (_pad_to(line[:0], _SPACING, width), _pad_to(line, cell_h, width))
        ][1:]  # spacing between lines, none after the last
        header = label_image(
            np.zeros((0, width, 3), np.uint8), section_title, font_scale=0.55, background=_SECTION
        )
        blocks.append(np.concatenate([header, _pad_to(header[:0], _GAP * 2, width), *body]))

    page_width = max(block.shape[1] for block in blocks) + 2 * _SPACING
    parts = [
        label_image(
            np.zeros((0, page_width, 3), np.uint8), title, font_scale=0.7, background=_TITLE
        )
    ]
    summary = _summary(items)
    if summary:
        parts.append(
            label_image(
                np.zeros((0, page_width, 3), np.uint8), summary, font_scale=0.45, background=_TITLE
            )
        )
    for block in blocks:
        parts.append(np.full((_SPACING, page_width, 3), _BACKGROUND, dtype=np.uint8))
        framed = np.full((block.shape[0], page_width, 3), _BACKGROUND, dtype=np.uint8)
        framed[:, _SPACING : _SPACING + block.shape[1]] = block
        parts.append(framed)
    parts.append(np.full((_SPACING, page_width, 3), _BACKGROUND, dtype=np.uint8))
    page = np.concatenate(parts, axis=0)
    written = atomic_write_png(path, page)
    log.info("demo report (%d sections, %d pairs) -> %s", len(blocks), len(items), written)
    return written
