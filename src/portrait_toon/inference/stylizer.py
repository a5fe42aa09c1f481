"""`Stylizer`: the Python API of a trained F. Load it from a file or a run folder, call it on a
PIL image, a uint8 array or a [-1, 1] tensor, get the same kind back at the input's size.

    from portrait_toon import Stylizer
    stylizer = Stylizer.load("logs/demo/runs")          # the newest trained stylizer there
    cartoon = stylizer(Image.open("me.jpg"))             # PIL in, PIL out
    print(stylizer.info["trained_on"], stylizer.info["steps"])

By default (`tile="auto"`) each image runs in one pass when its working memory fits the budget
(`max_memory_mb`: 2048 on a CPU, 80 % of the free memory on a GPU) and in seamless tiles
otherwise (`inference.memory.plan_tiles`); the tiled result equals the one-pass one up to the
blend of the seams.
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from portrait_toon.inference.memory import (
    AUTO_TILE_MIN,
    TilePlan,
    activation_bytes_per_pixel,
    default_budget_bytes,
    plan_tiles,
    round_up,
)
from portrait_toon.inference.model_info import model_info
from portrait_toon.inference.tiling import pad_multiple, stylize_float, stylize_uint8
from portrait_toon.utils.generator_file import load_stylizer

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_OVERLAP = 64
#: Files a run folder given to `Stylizer.load` may hold, by preference: the exported stylizer,
#: else a Lightning checkpoint. The newest of the preferred kind is used.
STYLIZER_PATTERNS = ("stylizer.pt", "stylizer.safetensors")
CHECKPOINT_PATTERN = "*.ckpt"
_UNSET: Any = object()
_MB = 1 << 20


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda if available, else cpu; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for, but CUDA is not available here")
    return resolved


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A stylizer/checkpoint file as is; a folder -> the newest `stylizer.pt`/`.safetensors`
    under it (any depth: a run folder or a folder of runs), else its newest `.ckpt`."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(
            f"'{path}' does not exist; give the stylizer.pt in a train run folder "
            "(logs/<task>/runs/<time>/stylizer.pt), a Lightning .ckpt, or a run folder"
        )
    for patterns in (STYLIZER_PATTERNS, (CHECKPOINT_PATTERN,)):
        found = [f for pattern in patterns for f in path.rglob(pattern) if f.is_file()]
        if found:
            return max(found, key=lambda f: (f.stat().st_mtime, str(f)))
    raise FileNotFoundError(
        f"'{path}' holds no {' / '.join(STYLIZER_PATTERNS)} and no {CHECKPOINT_PATTERN} file "
        "(looked in all subfolders); train one first (python train.py experiment=demo) or give "
        "the file's path"
    )


def _module_device(net: nn.Module) -> torch.device:
    tensor = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


class Stylizer:
    """A trained stylization network with the rules for running it on any image.

    `tile`: "auto" (one pass or tiles, from the image size, the network and the memory
    budget), None (always one pass) or a tile side in pixels. `overlap`: blend width of tiles.
    `max_memory_mb`: the working-memory budget of one image for `tile="auto"` (None: 2048 on a
    CPU, 80 % of the free memory on a GPU). `precision`: fp32, or bf16/fp16 autocast on a GPU;
    on a CPU these are refused (tens of times slower than fp32 there) unless the device was
    chosen automatically (`device="auto"`), in which case fp32 is used with a warning. `device`
    None keeps the net where it is (a CPU net with bf16/fp16 is refused, as for an explicit
    CPU); otherwise the net is moved there (in place, as `Module.to` does) and put in eval mode
    without gradients.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        device: str | torch.device | None = None,
        tile: int | str | None = "auto",
        overlap: int = DEFAULT_OVERLAP,
        max_memory_mb: float | None = None,
        precision: str = "fp32",
        info: dict[str, Any] | None = None,
    ) -> None:
        automatic = device is not None and str(device) == "auto"
        self.device = _module_device(net) if device is None else resolve_device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.tile = _check_tile(tile)
        if overlap < 0:
            raise ValueError(f"overlap={overlap} must be >= 0")
        self.overlap = int(overlap)
        self.max_memory_mb = _check_budget(max_memory_mb)
        self.precision = _check_precision(precision, self.device, automatic)
        self.info: dict[str, Any] = dict(info or {})
        self.info.setdefault("network", type(net).__name__)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        tile: int | str | None = "auto",
        max_memory_mb: float | None = None,
        precision: str = "fp32",
        overlap: int = DEFAULT_OVERLAP,
    ) -> Stylizer:
        """From a `stylizer.pt`/`.safetensors`, a Lightning `.ckpt` (its EMA network) or a
        run folder (its newest stylizer file, else its newest checkpoint)."""
        source = resolve_checkpoint(path)
        resolved = resolve_device(device)
        net = load_stylizer(source, resolved)
        return cls(
            net,
            device=device if str(device) == "auto" else resolved,
            tile=tile,
            overlap=overlap,
            max_memory_mb=max_memory_mb,
            precision=precision,
            info=model_info(source, net),
        )

    # ------------------------------------------------------------------------------- calls

    def __call__(
        self,
        image: Image.Image | np.ndarray | torch.Tensor,
        *,
        tile: int | str | None = _UNSET,
        max_memory_mb: float | None = _UNSET,
    ) -> Image.Image | np.ndarray | torch.Tensor:
        """Stylize `image`: PIL -> PIL (RGB), uint8 [H, W, 3] -> uint8 [H, W, 3], float
        [3, H, W] or [B, 3, H, W] in [-1, 1] -> float32 of the same shape on the input's
        device. `tile` and `max_memory_mb` override the stylizer's settings for this call."""
        tile = self.tile if tile is _UNSET else _check_tile(tile)
        budget = self.max_memory_mb if max_memory_mb is _UNSET else _check_budget(max_memory_mb)
        if isinstance(image, Image.Image):
            return Image.fromarray(self._array(_pil_to_rgb(image), tile, budget))
        if isinstance(image, np.ndarray):
            return self._array(_check_array(image), tile, budget)
        if isinstance(image, torch.Tensor):
            return self._tensor(image, tile, budget)
        raise TypeError(
            f"Stylizer takes a PIL image, a uint8 [H, W, 3] array or a [-1, 1] float tensor "
            f"[3, H, W] / [B, 3, H, W]; got {type(image).__name__}"
        )

    def plan(
        self,
        height: int,
        width: int,
        *,
        batch: int = 1,
        tile: int | str | None = _UNSET,
        max_memory_mb: float | None = _UNSET,
    ) -> TilePlan:
        """How an image of [height, width] would run (one pass or tiles), and its estimate."""
        tile = self.tile if tile is _UNSET else _check_tile(tile)
        budget = self.max_memory_mb if max_memory_mb is _UNSET else _check_budget(max_memory_mb)
        budget_bytes = default_budget_bytes(self.device) if budget is None else int(budget * _MB)
        if tile != "auto":
            return TilePlan(tile, 0, budget_bytes)
        return plan_tiles(
            height,
            width,
            net_bytes_per_pixel=self.activation_bytes_per_pixel,
            multiple=pad_multiple(self.net),
            budget_bytes=budget_bytes,
            batch=batch,
        )

    @functools.cached_property
    def activation_bytes_per_pixel(self) -> float:
        """The network's peak tensor bytes per pixel, measured once on a probe image."""
        return activation_bytes_per_pixel(
            self.net, self.device, _AUTOCAST_DTYPES.get(self.precision)
        )

    def _autocast(self) -> AbstractContextManager:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def _array(self, image: np.ndarray, tile: Any, budget: float | None) -> np.ndarray:
        height, width = image.shape[:2]
        return self._run(
            lambda chosen: stylize_uint8(
                self.net,
                image,
                tile=chosen,
                overlap=self.overlap,
                device=self.device,
                autocast=self._autocast(),
            ),
            self.plan(height, width, tile=tile, max_memory_mb=budget),
            f"{width}x{height}",
            auto=tile == "auto",
        )

    def _tensor(self, x: torch.Tensor, tile: Any, budget: float | None) -> torch.Tensor:
        single = x.ndim == 3
        batch = x.unsqueeze(0) if single else x
        if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
            raise ValueError(
                "Stylizer takes a float tensor [3, H, W] or [B, 3, H, W] in [-1, 1]; got "
                f"{batch.dtype} {tuple(x.shape)}"
            )
        low, high = float(batch.min()), float(batch.max())
        if low < -1.001 or high > 1.001:
            raise ValueError(
                f"tensor values span [{low:.3g}, {high:.3g}]; the stylizer takes [-1, 1] "
                "(x / 127.5 - 1 for uint8 values)"
            )
        height, width = batch.shape[-2:]
        out = self._run(
            lambda chosen: stylize_float(
                self.net,
                batch,
                tile=chosen,
                overlap=self.overlap,
                device=self.device,
                autocast=self._autocast(),
            ),
            self.plan(height, width, batch=batch.shape[0], tile=tile, max_memory_mb=budget),
            f"{batch.shape[0]}x{width}x{height}",
            auto=tile == "auto",
        )
        return out[0] if single else out

    def _run(self, job, plan: TilePlan, size: str, *, auto: bool):
        logger.debug("%s: %s", size, plan.describe())
        try:
            return job(plan.tile)
        except (MemoryError, torch.OutOfMemoryError) as error:
            smallest = round_up(AUTO_TILE_MIN, pad_multiple(self.net))
            if not auto or (plan.tile is not None and plan.tile <= smallest):
                raise
            # The estimate was too low for this machine right now: retry with the least memory.
            logger.warning(
                "%s: out of memory with %s (%s); retrying in tiles of %d px",
                size,
                plan.describe(),
                type(error).__name__,
                smallest,
            )
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return job(smallest)

    def __repr__(self) -> str:
        return (
            f"Stylizer({self.info.get('network')}, device={self.device}, tile={self.tile!r}, "
            f"precision={self.precision}, source={self.info.get('source')})"
        )


# --------------------------------------------------------------------------- argument checks


def _check_tile(tile: int | str | None) -> int | str | None:
    if tile is None or tile == "auto":
        return tile
    if isinstance(tile, str) and tile.strip().lower() in ("none", "null"):
        return None
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 1:
        raise ValueError(
            f"tile={tile!r}: give 'auto' (from the memory budget), None (one pass) or a tile "
            "side in pixels (e.g. 1024)"
        )
    return int(tile)


def _check_budget(max_memory_mb: float | None) -> float | None:
    if max_memory_mb is None:
        return None
    if isinstance(max_memory_mb, bool) or not isinstance(max_memory_mb, int | float):
        raise ValueError(f"max_memory_mb={max_memory_mb!r}: give megabytes (e.g. 2048) or None")
    if max_memory_mb <= 0:
        raise ValueError(f"max_memory_mb={max_memory_mb} must be > 0 (or None for the default)")
    return float(max_memory_mb)


def _check_precision(precision: str, device: torch.device, automatic: bool) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if precision == "fp32" or device.type == "cuda":
        return precision
    if automatic:
        logger.warning(
            "precision=%s needs a CUDA device and none was found: running in fp32 on the CPU "
            "(%s on a CPU is many times slower than fp32)",
            precision,
            precision,
        )
        return "fp32"
    raise ValueError(
        f"precision={precision} needs a CUDA device ({precision} on a CPU is many times slower "
        f"than fp32); use precision=fp32 on device={device}"
    )


def _check_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"Stylizer takes a uint8 RGB array [H, W, 3]; got {image.dtype} {image.shape} "
            "(convert grey with np.stack([a] * 3, axis=2), drop alpha with a[..., :3])"
        )
    return image


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 array of a PIL image; transparency is composited over white."""
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))
