"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

PROC_STATUS = Path("/proc/self/status")  # Linux >= 4.7 lists the process's "Umask:" there


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A temporary file in `path`'s folder (descriptor, name) for an atomic write of `path`.

    mkstemp creates it 0600; the file it becomes gets the mode a plain `open` would give
    (0666 less the umask), so outputs stay readable by whoever could read the folder.
    """
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(handle, 0o666 & ~current_umask())
    return handle, temp_name


def current_umask() -> int:
    """The process's umask, read without changing it.

    `os.umask` can only read the mask by setting it, for the whole process: a file another
    thread (the web app's workers) creates between the two calls would get mode 0666. So it is
    read from /proc on every call (cheap, and it follows later umask changes); only where /proc
    does not give it is the os.umask pair used, once, its answer kept for the process.
    """
    try:
        with PROC_STATUS.open(encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # no /proc, or a line it cannot read
        pass
    return _umask_by_setting_it()


@functools.cache
def _umask_by_setting_it() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = temp_file_beside(path)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 image as PNG, atomically."""
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(
            f"atomic_write_png({path}): expected uint8 HxW or HxWx3, "
            f"got {image.dtype} {image.shape}"
        )
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    return atomic_write_bytes(path, encoded.tobytes())
