"""Stylize an image file or a whole folder with a `Stylizer`: output names that mirror the
inputs, a progress bar, and a run that never loses the files after a bad one.

Every failure is caught per file (corrupt or truncated data, a decompression bomb, a non-image,
out of memory, anything else), logged, and recorded in `stylize_report.json` in the output
folder (per file: status, error, seconds, size), and the run goes on. The report is rewritten
as the run goes (at most every `REPORT_EVERY_S` seconds and at the end), so even a run killed
from outside leaves a record of what was done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from portrait_toon.data.images import (
    DEFAULT_MAX_PIXELS,
    WRITE_FORMATS,
    ImageReadError,
    list_images,
    read_image,
    write_image,
)
from portrait_toon.inference.stylizer import Stylizer
from portrait_toon.utils.files import atomic_write_bytes

logger = logging.getLogger(__name__)

REPORT_NAME = "stylize_report.json"
REPORT_EVERY_S = 10.0
WRITTEN, EXISTING, FAILED = "written", "existing", "failed"


@dataclass
class FileResult:
    """What happened to one input."""

    input: Path
    output: Path
    status: str  # written | existing | failed
    error: str | None = None
    seconds: float = 0.0
    width: int | None = None
    height: int | None = None
    file_bytes: int | None = None
    plan: str | None = None  # one pass / tiles of N px

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "size": None if self.width is None else {"width": self.width, "height": self.height},
            "file_bytes": self.file_bytes,
            "plan": self.plan,
        }


@dataclass
class StylizeReport:
    """What a folder run did, file by file."""

    output_dir: Path
    results: list[FileResult] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    def _with(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def written(self) -> list[tuple[Path, Path]]:
        return [(r.input, r.output) for r in self._with(WRITTEN)]

    @property
    def existing(self) -> list[Path]:
        return [r.output for r in self._with(EXISTING)]

    @property
    def failed(self) -> list[tuple[Path, str]]:
        return [(r.input, r.error or "") for r in self._with(FAILED)]

    @property
    def num_inputs(self) -> int:
        return len(self.results)

    def summary(self) -> str:
        lines = [f"stylized {len(self.written)} of {self.num_inputs} images into {self.output_dir}"]
        if self.existing:
            lines.append(
                f"{len(self.existing)} output(s) already existed and were kept "
                "(pass overwrite=true to replace them)"
            )
        if self.failed:
            lines.append(f"{len(self.failed)} input(s) failed:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.failed)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "num_inputs": self.num_inputs,
            "num_written": len(self.written),
            "num_existing": len(self.existing),
            "num_failed": len(self.failed),
            "model": self.model,
            "files": [r.to_dict() for r in self.results],
        }

    def save(self, path: Path) -> Path:
        return atomic_write_bytes(path, json.dumps(self.to_dict(), indent=2).encode())


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
    stylizer: Stylizer,
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    ext: str = "png",
    suffix: str = "",
    recursive: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    report_name: str | None = REPORT_NAME,
) -> StylizeReport:
    """Stylize an image file or a folder of them into `output_dir` (see `output_paths`).

    Images smaller than the net's grid (even 1 px) are padded and processed. Existing outputs
    are kept unless `overwrite=True`. Returns the `StylizeReport`, whose summary is logged and
    which is saved as `output_dir/report_name` (None: not saved).
    """
    pairs = output_paths(inputs, output_dir, ext=ext, suffix=suffix, recursive=recursive)
    report = StylizeReport(output_dir=Path(output_dir), model=dict(stylizer.info))
    report_path = Path(output_dir) / report_name if report_name else None
    if not pairs:
        logger.warning("no images found in %s (looked for %s files)", inputs, ext)
    saved_at = time.monotonic()
    bar = tqdm(pairs, desc="stylize", unit="img", disable=not progress, dynamic_ncols=True)
    with logging_redirect_tqdm() if progress else nullcontext():
        for source, target in bar:
            report.results.append(
                _one_file(stylizer, source, target, overwrite=overwrite, max_pixels=max_pixels)
            )
            if report_path is not None and time.monotonic() - saved_at > REPORT_EVERY_S:
                report.save(report_path)
                saved_at = time.monotonic()
    if report_path is not None:
        report.save(report_path)
        logger.info("report written to %s", report_path)
    log = logger.warning if report.failed else logger.info
    log("%s", report.summary())
    return report


def _one_file(
    stylizer: Stylizer, source: Path, target: Path, *, overwrite: bool, max_pixels: int
) -> FileResult:
    """Stylize one file into `target`; any failure becomes a `failed` result with its reason."""
    result = FileResult(input=source, output=target, status=FAILED)
    start = time.perf_counter()
    try:
        result.file_bytes = source.stat().st_size
        if not overwrite and target.exists():
            logger.info("kept existing %s (pass overwrite=true to replace it)", target)
            result.status = EXISTING
            return result
        image = read_image(source, max_pixels=max_pixels, min_side=1)
        result.height, result.width = image.shape[:2]
        result.plan = stylizer.plan(result.height, result.width).describe()
        styled = stylizer(image)
        del image  # the next file's decode must not stack on this one's arrays
        write_image(target, styled, overwrite=overwrite)
        result.status = WRITTEN
    except FileExistsError:  # the output appeared while we were working on it
        result.status = EXISTING
    except ImageReadError as error:
        result.error = error.reason
    except (MemoryError, torch.OutOfMemoryError) as error:
        result.error = (
            f"out of memory ({type(error).__name__}); lower max_memory_mb (e.g. "
            "max_memory_mb=1024) or set tile=512"
        )
    except Exception as error:  # noqa: BLE001 - one bad file must never end the run
        logger.debug("%s failed", source, exc_info=True)
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.seconds = time.perf_counter() - start
    if result.status == FAILED:
        logger.warning("failed %s: %s", source, result.error)
    return result
