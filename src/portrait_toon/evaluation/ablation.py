"""The ablation's report: ablation.json, ablation.md (the table) and ablation.png (the picture).

Every rung (baseline, full_body, color_reflection, cutface) is measured by the same function
on the same held-out pairs against the same reference targets (the full method's), so the
rows of the table differ only by how F was trained (tasks/ablation.py runs the ladder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait_toon.evaluation.metrics import SKIN_TONE_BINS
from portrait_toon.utils.files import atomic_write_bytes, atomic_write_png
from portrait_toon.utils.grid import label_image, tensor_to_uint8

__all__ = ["TABLE_COLUMNS", "write_ablation_json", "write_ablation_markdown", "write_ablation_png"]

JSON_FILE = "ablation.json"
MARKDOWN_FILE = "ablation.md"
PICTURE_FILE = "ablation.png"

# (metrics key, column title, format): the table's columns after the rung's name
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("steps", "steps", "{:d}"),
    ("l1_output_target", "L1 F(x),y", "{:.4f}"),
    ("l1_head_output_target", "L1 head", "{:.4f}"),
    ("l1_background_output_target", "L1 background", "{:.4f}"),
    ("skin_delta_e00_mean", "skin ΔE00 mean", "{:.2f}"),
    ("skin_delta_e00_worst", "skin ΔE00 worst bin", "{:.2f}"),
    ("whitewash_rate", "whitewash rate", "{:.3f}"),
    ("background_delta_e00_mean", "background ΔE00", "{:.2f}"),
    ("background_stlpips_mean", "background ST-LPIPS", "{:.4f}"),
    ("unseen_landscape_background_delta_e00_mean", "unseen-landscape ΔE00", "{:.2f}"),
    ("unseen_landscape_background_stlpips_mean", "unseen-landscape ST-LPIPS", "{:.4f}"),
    ("kid_stlpips", "KID (ST-LPIPS VGG16)", "{:.4f}"),
)

_BACKGROUND = (28, 28, 32)
_HEADER = (58, 62, 92)
_CAPTION = (44, 44, 52)
_GAP = 4


def _text(value: Any, form: str) -> str:
    if value is None:
        return "–"
    if form == "{:d}":
        return str(int(value))
    return form.format(float(value))


def write_ablation_json(folder: Path, variants: Mapping[str, Mapping[str, Any]], **extra) -> Path:
    """`{"variants": {rung: metrics}, **extra}` as ablation.json (atomically)."""
    data = {"variants": {name: dict(metrics) for name, metrics in variants.items()}, **extra}
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(folder) / JSON_FILE, text.encode("utf-8"))


def write_ablation_markdown(
    folder: Path,
    variants: Mapping[str, Mapping[str, Any]],
    commands: Mapping[str, str],
    machine: str,
    command: str,
    notes: Sequence[str] = (),
) -> Path:
    """ablation.md: one row per rung (TABLE_COLUMNS), the skin ΔE00 per bin, the commands."""
    lines = [
        "# Ablation: the paper's baseline and each step of the method",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        "Every rung is scored on the same held-out pairs against the full method's targets.",
        "",
        "| rung | " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for name, metrics in variants.items():
        cells = [_text(metrics.get(key), form) for key, _, form in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bins = [name for name, _ in SKIN_TONE_BINS]
    lines += [
        "",
        "Skin ΔE00 (input → F(x)) per ITA class, lightest first:",
        "",
        "| rung | " + " | ".join(bins) + " |",
        "|---|" + "---:|" * len(bins),
    ]
    for name, metrics in variants.items():
        by_bin = metrics.get("skin_delta_e00_by_bin") or {}
        lines.append(
            f"| {name} | " + " | ".join(_text(by_bin.get(b), "{:.2f}") for b in bins) + " |"
        )
    lines += ["", "Rung jobs (each `python train.py ...` as the sweep ran it):", ""]
    lines += [f"- {name}: `{text}`" for name, text in commands.items()]
    if notes:
        lines += ["", *notes]
    text = "\n".join(lines) + "\n"
    return atomic_write_bytes(Path(folder) / MARKDOWN_FILE, text.encode("utf-8"))


def _panel(image: torch.Tensor | None, size: int) -> np.ndarray:
    if image is None:
        blank = np.empty((size, size, 3), dtype=np.uint8)
        blank[:] = _CAPTION
        return label_image(blank[: size // 2], "no target (real photo)", background=_CAPTION)
    array = tensor_to_uint8(image)
    if array.shape[0] != size:
        import cv2

        interpolation = cv2.INTER_NEAREST if size > array.shape[0] else cv2.INTER_AREA
        array = cv2.resize(array, (size, size), interpolation=interpolation)
    return array


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = _BACKGROUND
    canvas[: image.shape[0], : image.shape[1]] = image
    return canvas


def write_ablation_png(
    folder: Path,
    rows: Sequence[Mapping[str, Any]],
    rungs: Sequence[str],
    image_size: int | None = None,
) -> Path:
    """ablation.png: one row per held-out input (`label`, `src`, `tgt` or None, `outputs`:
    rung -> F(x), [3,H,W] in [-1, 1]); columns input, target, then one per rung."""
    if not rows:
        raise ValueError(f"write_ablation_png({folder}): no rows")
    size = image_size or max(128, int(rows[0]["src"].shape[-1]))
    titles = ["input", "target (full method)", *rungs]
    lines = []
    for row in rows:
        panels = [_panel(row["src"], size), _panel(row.get("tgt"), size)]
        panels += [_panel(row["outputs"][rung], size) for rung in rungs]
        cells = [_fit(panel, size, size) for panel in panels]
        gap = np.empty((size, _GAP, 3), dtype=np.uint8)
        gap[:] = _BACKGROUND
        line = np.concatenate([part for cell in cells for part in (cell, gap)][:-1], axis=1)
        lines.append(label_image(line, str(row["label"]), position="bottom", background=_CAPTION))
    width = lines[0].shape[1]
    header_cells = []
    for title in titles:
        strip = label_image(np.zeros((0, size, 3), np.uint8), title, background=_HEADER)
        header_cells.append(strip)
        header_cells.append(np.full((header_cells[-1].shape[0], _GAP, 3), _BACKGROUND, np.uint8))
    header = np.concatenate(header_cells[:-1], axis=1)
    spacer = np.full((_GAP * 2, width, 3), _BACKGROUND, dtype=np.uint8)
    page = np.concatenate([header] + [part for line in lines for part in (spacer, line)], axis=0)
    return atomic_write_png(Path(folder) / PICTURE_FILE, page)
