"""Image grids and text labels for sample sheets and reports (no torchvision needed)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


def make_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    nrow: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
) -> torch.Tensor:
    """Tile `[N,C,H,W]` images (or a list of same-size `[C,H,W]`) into one `[C,H',W']` image.

    `nrow` images per row, `padding` pixels of `pad_value` between and around them; values are
    kept as they are (no rescaling), like torchvision's make_grid.
    """
    if not isinstance(images, torch.Tensor):
        images = list(images)
        if not images:
            raise ValueError("make_grid: no images")
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) != 1:
            raise ValueError(f"make_grid: images must share one shape, got {sorted(shapes)}")
        images = torch.stack(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid: expected [N,C,H,W] with N >= 1, got {tuple(images.shape)}")
    count, channels, height, width = images.shape
    columns = max(1, min(nrow, count))
    rows = -(-count // columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full(
        (channels, rows * cell_h + padding, columns * cell_w + padding), pad_value
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * cell_h + padding, column * cell_w + padding
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """`[3,H,W]` (or `[1,3,H,W]`) in [-1, 1] -> uint8 `[H,W,3]` RGB, rounded and clipped."""
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"tensor_to_uint8: expected [3,H,W], got {tuple(image.shape)}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    scaled = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def label_image(
    image: np.ndarray,
    text: str,
    position: str = "top",
    font_scale: float = 0.4,
    color: tuple[int, int, int] = (255, 255, 255),
    background: tuple[int, int, int] = (24, 24, 24),
) -> np.ndarray:
    """Return a copy of uint8 RGB `image` with a strip of text added above ("top") or below
    ("bottom") it, so the label never hides image content. Long text is cut to fit."""
    if not text:
        return image.copy()
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = 1
    width = image.shape[1]
    # Shorten until it fits (Hershey fonts are ASCII only, so ".." marks the cut).
    text = text.encode("ascii", "replace").decode("ascii")
    fits = cv2.getTextSize(text, font, font_scale, thickness)[0][0] <= width - 6
    while not fits and len(text) > 2:
        text = text[:-3] + ".."
        fits = cv2.getTextSize(text, font, font_scale, thickness)[0][0] <= width - 6
    # Strip height from a fixed reference string, so all labels at one scale line up.
    (_, text_h), baseline = cv2.getTextSize("Ag(|", font, font_scale, thickness)
    strip_h = text_h + baseline + 6
    strip = np.empty((strip_h, width, 3), dtype=np.uint8)
    strip[:] = background
    cv2.putText(strip, text, (3, text_h + 3), font, font_scale, color, thickness, cv2.LINE_AA)
    parts = (strip, image) if position == "top" else (image, strip)
    return np.concatenate(parts, axis=0)
