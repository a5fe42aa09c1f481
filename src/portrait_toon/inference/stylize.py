"""Run a trained stylization network F on user images: any size or aspect ratio, optional
seamless tiling for huge images, and whole folders with a progress bar and a skip report.

Untiled and tiled runs see the same padded image: it is padded once to a multiple of the net's
`pad_multiple` (as the U-Net would pad itself) and tiles start on multiples of it, so every
tile is aligned with the untiled pooling grid. Overlapping tiles are blended with linear
feathers, which hides the tile borders where a tile lacked context.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from portrait_toon.data.images import (
    DEFAULT_MAX_PIXELS,
    WRITE_FORMATS,
    ImageReadError,
    list_images,
    read_image,
    to_tensor,
    to_uint8,
    write_image,
)
from portrait_toon.utils.generator_file import load_stylizer

__all__ = [
    "PRECISIONS",
    "StylizeReport",
    "load_stylizer",
    "output_paths",
    "resolve_device",
    "stylize_image",
    "stylize_paths",
    "stylize_tensor",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
DEFAULT_OVERLAP = 64
# Above this many pixels an untiled run gets a hint about tiling (memory grows with the image).
LARGE_UNTILED_PIXELS = 12_000_000
_DEFAULT_PAD_MULTIPLE = 32


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda if available, else cpu; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for, but CUDA is not available here")
    return resolved


# ------------------------------------------------------------------------------- one image


def stylize_image(
    net: nn.Module,
    image: np.ndarray,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Stylize a uint8 [H, W, 3] RGB image with `net`; returns uint8 [H, W, 3].

    `tile`: None runs the whole image at once; an int (rounded up to the net's pad multiple)
    runs overlapping tiles of that side, bounding memory for huge images (4K and up).
    `device`: None uses the net's device; given, it must be the net's device (checked).
    `precision`: fp32, or bf16 autocast (CUDA only).
    """
    net_device = _module_device(net)
    if device is not None and not _same_device(torch.device(device), net_device):
        raise ValueError(
            f"device={device} but the net is on {net_device}; move it first "
            "(load_stylizer(path, device) does)"
        )
    x = to_tensor(image).to(net_device)
    y = stylize_tensor(net, x, tile=tile, overlap=overlap, precision=precision)
    return to_uint8(y)


def stylize_tensor(
    net: nn.Module,
    x: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    precision: str = "fp32",
) -> torch.Tensor:
    """`stylize_image` on a float [1, 3, H, W] tensor in [-1, 1] (on the net's device)."""
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one RGB image [1, 3, H, W], got {tuple(x.shape)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if precision == "bf16" and x.device.type != "cuda":
        raise ValueError(
            "precision=bf16 needs a CUDA device (bf16 on CPU is many times slower than fp32); "
            "use precision=fp32 on CPU"
        )
    if tile is not None and tile < 1:
        raise ValueError(f"tile={tile} must be a positive number of pixels or None")
    if overlap < 0:
        raise ValueError(f"overlap={overlap} must be >= 0")
    multiple = int(getattr(net, "pad_multiple", _DEFAULT_PAD_MULTIPLE))
    height, width = x.shape[-2:]
    if tile is None and height * width > LARGE_UNTILED_PIXELS:
        logger.info(
            "%dx%d (%.0f MP) in one pass: the default U-Net needs about 0.35 GB per megapixel "
            "on CPU; pass tile=1024 to bound memory (about 1 GB at any size)",
            width,
            height,
            height * width / 1e6,
        )
    padded, (top, left) = _pad_to_multiple(x, multiple)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    )
    with torch.inference_mode(), autocast:
        if tile is None or (padded.shape[-2] <= tile and padded.shape[-1] <= tile):
            out = _run(net, padded)
        else:
            out = _run_tiled(net, padded, tile=tile, overlap=overlap, multiple=multiple)
    return out[..., top : top + height, left : left + width]


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = net(x)
    if y.shape != x.shape:
        raise RuntimeError(
            f"{type(net).__name__} returned {tuple(y.shape)} for an input of {tuple(x.shape)}; "
            "a stylizer must map [1, 3, H, W] to the same shape"
        )
    return y.float()


def _run_tiled(
    net: nn.Module, x: torch.Tensor, *, tile: int, overlap: int, multiple: int
) -> torch.Tensor:
    """Overlapping tiles on a grid of `multiple`, blended with separable linear feathers."""
    tile = max(multiple, _round_up(tile, multiple))
    # The step must stay >= one grid cell, so at most tile - multiple of overlap.
    overlap = min(_round_up(overlap, multiple), tile - multiple)
    height, width = x.shape[-2:]
    rows = _spans(height, tile, overlap, multiple)
    cols = _spans(width, tile, overlap, multiple)
    out = torch.zeros(1, 3, height, width, device=x.device, dtype=torch.float32)
    weight_sum = torch.zeros(1, 1, height, width, device=x.device, dtype=torch.float32)
    for row_start, row_end in rows:
        row_weight = _feather(row_start, row_end, height, overlap, x.device)
        for col_start, col_end in cols:
            col_weight = _feather(col_start, col_end, width, overlap, x.device)
            weight = row_weight[:, None] * col_weight[None, :]
            piece = _run(net, x[..., row_start:row_end, col_start:col_end])
            out[..., row_start:row_end, col_start:col_end] += piece * weight
            weight_sum[..., row_start:row_end, col_start:col_end] += weight
    logger.debug(
        "stylized %dx%d in %dx%d tiles of %dx%d px",
        width,
        height,
        len(rows),
        len(cols),
        rows[0][1] - rows[0][0],
        cols[0][1] - cols[0][0],
    )
    return out / weight_sum


def _spans(length: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """[start, end) spans covering [0, length), as few as tiles of at most `tile` allow, of one
    common size, spread evenly, starting on multiples of `multiple`, each sharing at least
    `overlap` with the next. (All arguments are multiples of `multiple`.)

    Spreading evenly rather than pinning the last tile to the far edge keeps the extra work of
    tiling small: 4K in tiles of 1024 computes 13 % more pixels than one pass, not 50 %.
    """
    if length <= tile:
        return [(0, length)]
    # Work in grid cells so every start and size stays on the grid.
    length_u, tile_u, overlap_u = length // multiple, tile // multiple, overlap // multiple
    count = -(-(length_u - overlap_u) // (tile_u - overlap_u))
    # Smallest common size whose `count` copies cover the length with the overlaps; <= tile.
    size_u = -(-(length_u + (count - 1) * overlap_u) // count)
    starts_u = [i * (length_u - size_u) // (count - 1) for i in range(count)]
    return [(start * multiple, (start + size_u) * multiple) for start in starts_u]


def _feather(start: int, end: int, length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """1-D blend weights of a span: linear ramps over `overlap` px at edges shared with a
    neighbour (never zero, so every pixel keeps some weight), flat 1 at the image border."""
    weight = torch.ones(end - start, device=device)
    if overlap == 0:
        return weight
    ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
    if start > 0:
        weight[:overlap] = torch.minimum(weight[:overlap], ramp)
    if end < length:
        weight[-overlap:] = torch.minimum(weight[-overlap:], ramp.flip(0))
    return weight


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H, W up to `multiple`, split evenly; reflect, or replicate when the image is too
    small to reflect (same rule as the U-Net, so an untiled run equals `net(x)`)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0)
    top, left = pad_h // 2, pad_w // 2
    pads = (left, pad_w - left, top, pad_h - top)
    fits = max(pads[0], pads[1]) < width and max(pads[2], pads[3]) < height
    return F.pad(x, pads, mode="reflect" if fits else "replicate"), (top, left)


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def _same_device(asked: torch.device, actual: torch.device) -> bool:
    # "cuda" means the current CUDA device, so it matches "cuda:0" when that is current.
    if asked.type != actual.type:
        return False
    return asked.index is None or actual.index is None or asked.index == actual.index


def _module_device(net: nn.Module) -> torch.device:
    tensor = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


# ------------------------------------------------------------------------------ many files


@dataclass
class StylizeReport:
    """What `stylize_paths` did: files written, outputs kept because they existed, failures."""

    output_dir: Path
    written: list[tuple[Path, Path]] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def num_inputs(self) -> int:
        return len(self.written) + len(self.existing) + len(self.failed)

    def summary(self) -> str:
        lines = [f"stylized {len(self.written)} of {self.num_inputs} images into {self.output_dir}"]
        if self.existing:
            lines.append(
                f"{len(self.existing)} output(s) already existed and were kept "
                "(pass overwrite=true to replace them)"
            )
        if self.failed:
            lines.append(f"{len(self.failed)} input(s) skipped:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.failed)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "output_dir": str(self.output_dir),
            "num_inputs": self.num_inputs,
            "num_written": len(self.written),
            "num_existing": len(self.existing),
            "num_failed": len(self.failed),
            "written": [{"input": str(i), "output": str(o)} for i, o in self.written],
            "existing": [str(p) for p in self.existing],
            "failed": [{"input": str(p), "reason": r} for p, r in self.failed],
        }


def output_paths(
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    ext: str = "png",
    suffix: str = "",
    recursive: bool = True,
) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder of images.

    Output names mirror the inputs (subfolders kept): `<rel dir>/<stem><suffix>.<ext>`. When
    two inputs would share an output (`a.jpg`, `a.png`), their original suffix is kept in the
    name (`a_jpg.png`, `a_png.png`). A folder's listing skips files inside `output_dir` (when it
    is a subfolder of the input) so reruns never stylize their own results.
    """
    source = Path(inputs)
    output_dir = Path(output_dir)
    ext = ext.lower().lstrip(".")
    if f".{ext}" not in WRITE_FORMATS:
        raise ValueError(f"ext={ext!r} cannot be written; use one of {sorted(WRITE_FORMATS)}")
    if not source.exists():
        raise FileNotFoundError(f"input '{source}' does not exist; give an image or a folder")
    if source.is_dir():
        out_resolved = output_dir.resolve()
        src_resolved = source.resolve()
        files = [
            path
            for path in list_images(source, recursive=recursive)
            if out_resolved == src_resolved or not path.resolve().is_relative_to(out_resolved)
        ]
        relatives = [path.relative_to(source) for path in files]
    else:
        files, relatives = [source], [Path(source.name)]

    def name(relative: Path, keep_suffix: bool) -> Path:
        stem = f"{relative.stem}_{relative.suffix.lstrip('.')}" if keep_suffix else relative.stem
        return output_dir / relative.parent / f"{stem}{suffix}.{ext}"

    plain = [name(rel, keep_suffix=False) for rel in relatives]
    counts: dict[Path, int] = {}
    for path in plain:
        counts[path] = counts.get(path, 0) + 1
    pairs = [
        (src, name(rel, keep_suffix=True) if counts[out] > 1 else out)
        for src, rel, out in zip(files, relatives, plain)
    ]
    clashes = [src for src, out in pairs if src.resolve() == out.resolve()]
    if clashes:
        raise ValueError(
            f"output would replace its own input ('{clashes[0]}' and {len(clashes) - 1} more); "
            "choose another output folder or set suffix=_toon"
        )
    return pairs


def stylize_paths(
    net: nn.Module,
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    ext: str = "png",
    suffix: str = "",
    recursive: bool = True,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> StylizeReport:
    """Stylize an image file or a folder of them into `output_dir` (see `output_paths`).

    Unreadable files are logged with the reason and skipped; the rest are still processed.
    Existing outputs are kept unless `overwrite=True`. Returns a `StylizeReport`, whose
    summary is also logged.
    """
    pairs = output_paths(inputs, output_dir, ext=ext, suffix=suffix, recursive=recursive)
    report = StylizeReport(output_dir=Path(output_dir))
    if not pairs:
        logger.warning("no images found in %s (looked for %s files)", inputs, ext)
        return report
    bar = tqdm(pairs, desc="stylize", unit="img", disable=not progress, dynamic_ncols=True)
    with logging_redirect_tqdm() if progress else nullcontext():
        for source, target in bar:
            if not overwrite and target.exists():
                logger.info("kept existing %s (pass overwrite=true to replace it)", target)
                report.existing.append(target)
                continue
            try:
                image = read_image(source, max_pixels=max_pixels)
            except ImageReadError as error:
                logger.warning("skipped %s: %s", source, error.reason)
                report.failed.append((source, error.reason))
                continue
            try:
                result = stylize_image(
                    net, image, tile=tile, overlap=overlap, device=device, precision=precision
                )
            except (torch.OutOfMemoryError, MemoryError) as error:
                reason = f"out of memory ({type(error).__name__}); retry with tile=512"
                logger.warning("skipped %s: %s", source, reason)
                report.failed.append((source, reason))
                continue
            try:
                write_image(target, result, overwrite=overwrite)
            except FileExistsError:  # appeared while we were working on it
                report.existing.append(target)
                continue
            report.written.append((source, target))
    log = logger.warning if report.failed else logger.info
    log("%s", report.summary())
    return report
