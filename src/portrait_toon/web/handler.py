"""What the page's `stylize` endpoint does with one upload: read it as the project reads any
image (EXIF orientation, greyscale/alpha/16-bit converted, a pixel limit), apply the page's
size/tile options, run the stylizer, and turn every problem with the upload into a message on
the page (`gr.Error`) instead of a failed server.

The function gets Gradio's raw upload record (the event runs with `preprocess=False`): Gradio's
own preprocessing would open the file with Pillow before we could check it, and a non-image
would then fail with a bare "Error" and no reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from portrait_toon.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image, write_image

__all__ = [
    "DEFAULT_OPTIONS",
    "SIZE_CHOICES",
    "TILE_CHOICES",
    "StylizeHandler",
    "parse_size",
    "parse_tile",
]

logger = logging.getLogger(__name__)

#: Tile choices on the page: auto (one pass or tiles within the memory budget), one pass, or a
#: fixed tile side in pixels.
TILE_CHOICES = ("auto", "one pass", "512", "1024", "2048")
#: Size choices: the original size, or the longest side scaled down to this many pixels first.
SIZE_CHOICES = ("original", "2048", "1024", "512")
DEFAULT_OPTIONS: dict[str, str] = {"tile": "auto", "size": "original"}


def parse_tile(choice: str) -> int | str | None:
    """A page tile choice -> the stylizer's `tile`: "auto", None (one pass) or a side in px."""
    choice = str(choice).strip().lower()
    if choice == "auto":
        return "auto"
    if choice in ("one pass", "none", "null"):
        return None
    if choice.isdigit() and int(choice) > 0:
        return int(choice)
    raise ValueError(f"tile={choice!r}: choose one of {list(TILE_CHOICES)}")


def parse_size(choice: str) -> int | None:
    """A page size choice -> the longest side to scale down to, or None (original size)."""
    choice = str(choice).strip().lower()
    if choice == "original":
        return None
    if choice.isdigit() and int(choice) >= 8:
        return int(choice)
    raise ValueError(f"size={choice!r}: choose one of {list(SIZE_CHOICES)}")


def _fit_longest_side(image: np.ndarray, longest: int | None) -> np.ndarray:
    """Scale `image` down (Lanczos) so its longest side is at most `longest`."""
    height, width = image.shape[:2]
    if longest is None or max(height, width) <= longest:
        return image
    scale = longest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


class StylizeHandler:
    """The endpoint's function: `handler(upload, options) -> PNG path` (or a gr.Error).

    `stylizer`: a `portrait_toon.Stylizer` (called on a uint8 [H, W, 3] array with a per-call
    `tile`; its `plan(height, width, tile=...)` says how an image will run). `notify(message)`
    shows a note on the page (gr.Info in the app); `max_pixels` bounds what an upload may
    decode to. The result is written to `results_dir` as `<upload name>_toon.png`, the name
    the page's download button offers; Gradio serves its own copy, so each request first
    removes the previous result (requests run one at a time).
    """

    def __init__(
        self,
        stylizer: Any,
        *,
        results_dir: str | Path,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.stylizer = stylizer
        self.max_pixels = int(max_pixels)
        self.notify = notify
        self.results_dir = Path(results_dir)

    def __call__(self, upload: Any, options: Mapping[str, str] | None = None) -> str:
        import gradio as gr

        path, name = _upload_path(upload)
        if path is None:
            raise gr.Error(
                "No image: upload a photo or pick an example first.",
                title="No image",
                print_exception=False,
            )
        options = dict(DEFAULT_OPTIONS, **(options or {}))
        try:
            tile = parse_tile(options["tile"])
            longest = parse_size(options["size"])
        except ValueError as error:
            raise gr.Error(str(error), title="Bad option", print_exception=False) from None
        try:
            image = read_image(path, max_pixels=self.max_pixels)
        except ImageReadError as error:
            logger.warning("upload %s rejected: %s", name, error.reason)
            raise gr.Error(
                f"Cannot read '{name}': {error.reason}",
                title="Cannot use this file",
                print_exception=False,
            ) from None
        image = _fit_longest_side(image, longest)
        height, width = image.shape[:2]
        plan = self.stylizer.plan(height, width, tile=tile)
        # a tile at least the image's size is one pass (the stylizer runs it so)
        one_pass = plan.tile is None or max(height, width) <= plan.tile
        how = "one pass" if one_pass else f"tiles of {plan.tile} px"
        start = time.perf_counter()
        try:
            output = self.stylizer(image, tile=tile)
        except (MemoryError, torch.OutOfMemoryError):
            raise gr.Error(
                f"'{name}' ({width}x{height}) needs more memory than this server has; pick a "
                "smaller size or a smaller tile",
                title="Out of memory",
            ) from None
        except Exception as error:  # noqa: BLE001 - say what failed; the server keeps serving
            logger.exception("stylizing %s failed", name)
            raise gr.Error(
                f"Stylizing '{name}' failed: {type(error).__name__}: {error}", title="Failed"
            ) from None
        seconds = time.perf_counter() - start
        logger.info("stylized %s (%dx%d, %s) in %.2f s", name, width, height, how, seconds)
        if self.notify is not None:
            self.notify(f"{name}: {width}x{height} px, {how}, {seconds:.1f} s")
        return str(self._save(np.asarray(output, dtype=np.uint8), name))

    def _save(self, image: np.ndarray, name: str) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        for old in self.results_dir.glob("*.png"):
            old.unlink(missing_ok=True)
        # the user's file name, reduced to characters safe in any file system
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image"
        return write_image(self.results_dir / f"{stem}_toon.png", image, overwrite=True)


def _upload_path(upload: Any) -> tuple[str | None, str]:
    """(file path, name to show) of Gradio's upload record, a path, or (None, "")."""
    if upload is None:
        return None, ""
    if isinstance(upload, str | Path):
        return str(upload), Path(upload).name
    if isinstance(upload, Mapping):
        path = upload.get("path")
        name = upload.get("orig_name") or (Path(path).name if path else "")
        return (str(path) if path else None), str(name)
    path = getattr(upload, "path", None)
    name = getattr(upload, "orig_name", None) or (Path(path).name if path else "")
    return (str(path) if path else None), str(name)
