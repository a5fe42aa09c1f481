"""Safe image file I/O at the project's boundaries: any common file in as uint8 RGB, atomic writes
out, and the uint8 HWC <-> [-1, 1] NCHW tensor conversions.

Decisions (documented here because callers rely on them):
- EXIF orientation is applied, so arrays are upright as a photo viewer shows them.
- Transparency (RGBA, LA, PA, palette with a transparent colour) is composited over white, the
  colour viewers and web pages show behind cut-out portraits; a transparent pixel never turns
  black. Pass `alpha_background` to pick another colour.
- 16-bit files (PNG/TIFF, grey or colour) are scaled with round(v / 257), which maps 0 -> 0 and
  65535 -> 255 exactly; Pillow alone would keep only the high byte of 16-bit colour images.
- Images with a side under `min_side` (8 px) are refused with a clear error instead of being
  upscaled: a network cannot stylize what is not there.
- Pillow's decompression-bomb limit is replaced by `max_pixels` (default 100 MP), checked on
  the header before any pixel is decoded.
Every conversion is logged at INFO level as a note that names the file.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from portrait_toon.utils.files import temp_file_beside

logger = logging.getLogger(__name__)

#: Suffixes `list_images` picks up (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
)
#: Formats `write_image` writes, by suffix.
WRITE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MIN_SIDE = 8
WHITE = (255, 255, 255)

_EXIF_ORIENTATION_TAG = 0x0112
# Pillow's pixel limit is module state; it is swapped for the duration of one open.
_PIXEL_LIMIT_LOCK = threading.Lock()


class ImageReadError(OSError):
    """A file that cannot be turned into an RGB image; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # Keeps the exception picklable (DataLoader workers send it to the main process).
        return (type(self), (self.path, self.reason))


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    alpha_background: tuple[int, int, int] = WHITE,
) -> np.ndarray:
    """Read an image file as an upright uint8 RGB array [H, W, 3].

    Raises `ImageReadError` (naming the file, the problem and what to do) for missing, corrupt,
    truncated, non-image, too large or too small files.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file; check the path")
    if path.is_dir():
        raise ImageReadError(path, "it is a folder, not an image file")
    try:
        with _open(path) as image:
            _check_size(path, image.size, max_pixels=max_pixels, min_side=min_side)
            if getattr(image, "n_frames", 1) > 1:
                _note(path, f"has {image.n_frames} frames; using the first")
            _note_colour_profile(path, image)
            if _is_16bit_multichannel(image):
                array = _read_16bit_with_cv2(path, image, alpha_background)
            else:
                image.load()  # decode now so truncation surfaces here, inside the try
                array = _pil_to_rgb(path, image, alpha_background)
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageReadError(
            path,
            "not an image Pillow can decode (wrong suffix, unsupported format or corrupt "
            "header); convert it to PNG or JPEG, or remove it from the input",
        ) from error
    except PermissionError as error:
        raise ImageReadError(path, "permission denied; check the file's permissions") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports truncated and damaged data as OSError/SyntaxError/ValueError.
        raise ImageReadError(
            path,
            f"the file is damaged or truncated ({error}); re-export or re-download it, "
            "or remove it from the input",
        ) from error
    # Writable and contiguous: Pillow hands out read-only views, which torch warns about.
    return array if array.flags.writeable and array.flags.c_contiguous else array.copy()


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    overwrite: bool = False,
    quality: int = 95,
) -> Path:
    """Write a uint8 [H, W, 3] RGB (or [H, W] grey) array atomically; the format follows the
    suffix (png, jpg/jpeg, webp, bmp, tif/tiff). Parent folders are created.

    A reader never sees a half-written file: the data goes to a temporary file in the same
    folder, which is then linked/renamed into place. An existing file is kept (FileExistsError)
    unless `overwrite=True`.
    """
    path = Path(path)
    file_format = WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(
            f"cannot write '{path}': unsupported suffix '{path.suffix}'; "
            f"use one of {sorted(WRITE_FORMATS)}"
        )
    _check_uint8_image(image, what=f"image for '{path}'", allow_grey=True)
    if not overwrite and path.exists():
        raise FileExistsError(_exists_message(path))
    path.parent.mkdir(parents=True, exist_ok=True)

    options: dict[str, object] = {}
    if file_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    descriptor, temp_name = temp_file_beside(path)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            Image.fromarray(np.ascontiguousarray(image)).save(stream, format=file_format, **options)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temp_name, path)
        else:
            _link_no_clobber(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return path


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [1, 3, H, W] in [-1, 1]."""
    _check_uint8_image(image, what="to_tensor input", allow_grey=False)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    return tensor.float().div_(127.5).sub_(1.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float [1, 3, H, W] or [3, H, W] in [-1, 1] -> uint8 [H, W, 3] (rounded, clamped)."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"to_uint8 takes one image, got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"to_uint8 expects [1, 3, H, W] or [3, H, W], got {tuple(tensor.shape)}")
    scaled = (tensor.detach().float().cpu() + 1.0).mul_(127.5).round_().clamp_(0, 255)
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (by suffix, case-insensitive), sorted by relative path.

    Hidden files and folders (names starting with '.') are skipped: they are system clutter
    (e.g. macOS '._x.jpg' resource forks) or temporary files of an unfinished write.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"'{folder}' is not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for candidate in candidates:
        relative = candidate.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            found.append(candidate)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an [H, W, ...] array as EXIF orientation 1-8 asks (same result as
    `PIL.ImageOps.exif_transpose`), for arrays Pillow cannot hold (16-bit colour)."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(image, k=-1)
    if orientation == 7:
        return image[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(image, k=1)
    return image


# ----------------------------------------------------------------------------- internals


def _open(path: Path) -> Image.Image:
    """`Image.open` (parses the header only) with Pillow's own decompression-bomb check off:
    `_check_size` applies `max_pixels` to the header's size right after, before any pixel is
    decoded, with one clear message. Pillow's limit is module state, hence the lock; it is
    held only while the header is parsed."""
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _check_size(path: Path, size: tuple[int, int], *, max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"{width}x{height} = {width * height:,} pixels is above max_pixels={max_pixels:,} "
            "(a guard against decompression bombs); if you trust the file, raise max_pixels",
        )
    if min(width, height) < min_side:
        raise ImageReadError(
            path,
            f"{width}x{height} px is too small (each side needs at least {min_side} px); "
            "use a larger image",
        )


def _note(path: Path, message: str) -> None:
    logger.info("%s: %s", path, message)


def _note_colour_profile(path: Path, image: Image.Image) -> None:
    """Say so when an embedded ICC profile is not sRGB: its values are used as stored (as if
    sRGB), which shifts colours slightly for e.g. Display P3 phone photos."""
    icc = image.info.get("icc_profile")
    if not icc:
        return
    try:
        from PIL import ImageCms

        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except Exception:  # an unreadable profile is only worth a note, never a failure
        description = "unreadable"
    description = description.strip()
    if "srgb" not in description.lower():
        _note(path, f"embedded colour profile '{description}' is not applied (read as sRGB)")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block must not make a readable image unreadable
        return 1


def _pil_to_rgb(path: Path, image: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    orientation = _orientation(image)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        _note(path, f"rotated/flipped upright (EXIF orientation {orientation})")
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode == "P" or mode == "PA":
        transparent = mode == "PA" or image.has_transparency_data
        image = image.convert("RGBA" if transparent else "RGB")
        _note(path, "palette image converted to RGB")
        if not transparent:
            return np.asarray(image)
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        if mode in ("RGBa", "La"):  # premultiplied alpha: undo it first
            image = image.convert(mode[0:-1] + "A")
        rgba = np.asarray(image.convert("RGBA"))
        _note(path, f"{mode} image: alpha composited over {background}")
        return _composite(rgba[..., :3].astype(np.float32), rgba[..., 3] / 255.0, background)
    if mode in ("1", "L"):
        _note(path, "grayscale image converted to RGB")
        return np.asarray(image.convert("RGB"))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        _note(path, f"{_bit_depth_name(mode)} grayscale scaled to 8 bits (value/257) as RGB")
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        # Float images have no fixed range: [0, 1] is the common convention, else 0..255.
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        _note(path, f"32-bit float grayscale scaled by {scale:g} to 8-bit RGB")
        grey = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    # CMYK, YCbCr, LAB, HSV and anything else Pillow knows how to turn into RGB.
    _note(path, f"{mode} image converted to RGB")
    return np.asarray(image.convert("RGB"))


def _bit_depth_name(mode: str) -> str:
    return "16-bit" if mode.startswith("I;16") else "32-bit integer (read as 16-bit range)"


def _is_16bit_multichannel(image: Image.Image) -> bool:
    """True for 16-bit colour/alpha files, which Pillow decodes by dropping the low byte."""
    if image.mode not in ("RGB", "RGBA", "LA") or not image.tile:
        return False
    raw_mode = image.tile[0].args
    if isinstance(raw_mode, tuple):  # TIFF: (rawmode, ...)
        raw_mode = raw_mode[0] if raw_mode else ""
    return isinstance(raw_mode, str) and ";16" in raw_mode


def _read_16bit_with_cv2(
    path: Path, image: Image.Image, background: tuple[int, int, int]
) -> np.ndarray:
    import cv2  # only needed for 16-bit colour files

    orientation = _orientation(image)
    data = np.fromfile(path, dtype=np.uint8)  # imdecode copes with non-ASCII paths
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # unchanged: no EXIF rotation, 16 bits
    if decoded is None or decoded.dtype != np.uint16:
        raise ImageReadError(path, "16-bit image could not be decoded; re-export it")
    if decoded.ndim == 2:
        decoded = decoded[..., None]
    channels = decoded.shape[2]
    if channels == 1:
        colour, alpha = np.repeat(decoded, 3, axis=2), None
    elif channels == 2:
        colour, alpha = np.repeat(decoded[..., :1], 3, axis=2), decoded[..., 1]
    else:
        colour = decoded[..., 2::-1]  # BGR(A) -> RGB
        alpha = decoded[..., 3] if channels == 4 else None
    colour = colour.astype(np.float64) / 257.0
    if alpha is None:
        _note(path, "16-bit colour image scaled to 8 bits (value/257)")
        rgb = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
    else:
        _note(path, f"16-bit image with alpha: scaled to 8 bits, composited over {background}")
        rgb = _composite(colour, alpha / 65535.0, background)
    if orientation != 1:
        _note(path, f"rotated/flipped upright (EXIF orientation {orientation})")
        rgb = apply_exif_orientation(rgb, orientation)
    return rgb


def _composite(
    colour: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]
) -> np.ndarray:
    """colour (0..255 float, straight alpha) over a flat background; rounded uint8."""
    alpha = alpha.astype(np.float64)[..., None]
    backdrop = np.asarray(background, dtype=np.float64)
    mixed = colour * alpha + backdrop * (1.0 - alpha)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _check_uint8_image(image: np.ndarray, *, what: str, allow_grey: bool) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise TypeError(f"{what} must be a uint8 numpy array, got {kind}")
    if image.ndim == 2 and allow_grey:
        return
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be [H, W, 3] RGB, got shape {image.shape}")


def _exists_message(path: Path) -> str:
    return f"'{path}' already exists; pass overwrite=True (overwrite=true on the command line)"


def _link_no_clobber(source: str, target: Path) -> None:
    """Move `source` to `target` only if `target` does not exist, atomically where the file
    system has hard links (a plain exists-then-rename check could race another writer)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(_exists_message(target)) from None
    except OSError:  # no hard links here (some network/FAT file systems): best effort
        if target.exists():
            raise FileExistsError(_exists_message(target)) from None
        os.replace(source, target)
