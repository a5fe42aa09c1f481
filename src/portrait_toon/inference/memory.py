"""How much memory stylizing an image takes, and the tile plan that keeps it within a budget.

The network's activation memory per pixel is *measured*, not guessed: `activation_bytes_per_pixel`
runs the net once on a small probe image under a dispatch mode that counts the bytes of every
tensor the forward pass creates and frees, and reports the peak of the live total divided by the
probe's pixels. A fully convolutional net's activations scale with the pixel count, so the figure
holds at any size (measured on the default U-Net: 236 B/px at 128, 256 and 512 px probes; the
demo's full-resolution U-Net: 464 B/px at the same three sizes).

The count sees tensors only, not the kernels' own scratch memory or the allocator's slack, so
`ALLOCATOR_OVERHEAD` scales it. Its basis: peak RSS above the pre-forward RSS of one fp32 CPU
forward pass at 1024^2 and 2048^2 (fresh process, /proc/self/status VmHWM) was 310-320 B/px for
the default U-Net and 592-624 B/px for the demo's, i.e. 1.28-1.36x the tensor count; 1.4 covers
both.

`plan_tiles` turns the figure into a decision: one pass when the whole image fits the budget,
else the largest tile (at most `AUTO_TILE_MAX`) whose working set fits.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

logger = logging.getLogger(__name__)

#: Peak RSS over counted tensor bytes of a CPU forward pass (see the module doc for the basis).
ALLOCATOR_OVERHEAD = 1.4
#: Default budget on a CPU, MB (a 4K photo then runs in tiles; see `plan_tiles`).
DEFAULT_CPU_BUDGET_MB = 2048
#: Share of a GPU's free memory the default budget takes (the rest: cuDNN workspaces, slack).
GPU_FREE_SHARE = 0.8
#: Largest tile side `tile=auto` picks: past ~1024 px a tile's redundant overlap is already
#: small (13 % extra pixels for 4K in 1024 px tiles at 64 px overlap) while memory keeps
#: growing with the tile's area.
AUTO_TILE_MAX = 1024
#: Smallest tile side `tile=auto` picks: smaller tiles lose context at their borders.
AUTO_TILE_MIN = 256
_MB = 1 << 20

# Bytes per pixel of the buffers around the network, besides its activations:
# a float32 RGB input tensor (12) and the uint8 copy it is made from (3) ...
_INPUT_BYTES = 15
# ... the float row band that tiles are blended into, its copy when it grows, and the
# float/uint8 temporaries when finished rows are converted (12 + 12 + 15) ...
_BAND_BYTES = 39
# ... and the uint8 RGB output (3).
_OUTPUT_BYTES = 3


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensors created inside the mode that are still alive; keeps the
    peak. Views share their base's storage and are counted once (by storage address)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Otherwise torch wraps __torch_dispatch__ in a Dynamo guard whose first call imports
        # torch._dynamo (as slow as importing torch); this mode is never compiled.
        return False

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self.refs:
                self.refs[key] = 0
                self.sizes[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def activation_bytes_per_pixel(
    net: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
) -> float:
    """Peak bytes of the tensors `net` creates per input pixel (one image), counted on a probe
    of 8 x `pad_multiple` px a side (at least 128) on `device`, under the given autocast."""
    multiple = int(getattr(net, "pad_multiple", 32))
    side = max(128, 8 * multiple)
    x = torch.zeros(1, 3, side, side, device=device)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    )
    counter = _LiveTensorBytes()
    with torch.inference_mode(), autocast, counter:
        y = net(x)
    del y
    return counter.peak / (side * side)


def default_budget_bytes(device: torch.device) -> int:
    """`DEFAULT_CPU_BUDGET_MB` on a CPU; `GPU_FREE_SHARE` of the free memory on a GPU (what
    the driver reports free plus what PyTorch's allocator holds unused)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(GPU_FREE_SHARE * (free + cached))
    return DEFAULT_CPU_BUDGET_MB * _MB


@dataclass(frozen=True)
class TilePlan:
    """How one image is run: `tile` None = one pass, else square tiles of at most that side."""

    tile: int | None
    estimated_bytes: int
    budget_bytes: int

    def describe(self) -> str:
        how = "one pass" if self.tile is None else f"tiles of {self.tile} px"
        return (
            f"{how} (estimated {self.estimated_bytes / _MB:.0f} MB of a "
            f"{self.budget_bytes / _MB:.0f} MB budget)"
        )


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def one_pass_bytes(height: int, width: int, *, net_bytes_per_pixel: float, multiple: int) -> int:
    """Working memory of running a whole [H, W] image at once (padded to `multiple`)."""
    padded = round_up(height, multiple) * round_up(width, multiple)
    network = net_bytes_per_pixel * ALLOCATOR_OVERHEAD + _INPUT_BYTES
    return int(padded * network + height * width * _OUTPUT_BYTES)


def tiled_bytes(
    height: int,
    width: int,
    tile: int,
    *,
    net_bytes_per_pixel: float,
    multiple: int,
) -> int:
    """Working memory of running [H, W] in tiles of at most `tile` px a side: one tile through
    the network, the row band the tiles are blended into, and the uint8 output."""
    tile_h = min(round_up(tile, multiple), round_up(height, multiple))
    tile_w = min(round_up(tile, multiple), round_up(width, multiple))
    network = net_bytes_per_pixel * ALLOCATOR_OVERHEAD + _INPUT_BYTES
    band = tile_h * round_up(width, multiple) * _BAND_BYTES
    return int(tile_h * tile_w * network + band + height * width * _OUTPUT_BYTES)


def plan_tiles(
    height: int,
    width: int,
    *,
    net_bytes_per_pixel: float,
    multiple: int,
    budget_bytes: int,
    batch: int = 1,
) -> TilePlan:
    """One pass if the image's working memory fits `budget_bytes`, else the largest tile side
    (a multiple of `multiple`, from `AUTO_TILE_MAX` down to `AUTO_TILE_MIN`) that fits. When
    not even the smallest fits, the smallest is used and a warning says so."""
    whole = batch * one_pass_bytes(
        height, width, net_bytes_per_pixel=net_bytes_per_pixel, multiple=multiple
    )
    if whole <= budget_bytes:
        return TilePlan(None, whole, budget_bytes)
    largest = max(multiple, AUTO_TILE_MAX // multiple * multiple)
    smallest = min(largest, round_up(AUTO_TILE_MIN, multiple))
    estimate = 0
    for tile in range(largest, smallest - 1, -multiple):
        estimate = batch * tiled_bytes(
            height, width, tile, net_bytes_per_pixel=net_bytes_per_pixel, multiple=multiple
        )
        if estimate <= budget_bytes:
            return TilePlan(tile, estimate, budget_bytes)
    logger.warning(
        "%dx%d: even tiles of %d px need about %.0f MB, over the %.0f MB memory budget; "
        "trying anyway (raise max_memory_mb, or free memory)",
        width,
        height,
        smallest,
        estimate / _MB,
        budget_bytes / _MB,
    )
    return TilePlan(smallest, estimate, budget_bytes)
