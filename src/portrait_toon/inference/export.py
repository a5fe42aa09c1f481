"""Exports of a trained stylizer for other runtimes: ONNX, TorchScript and a `torch.export`
program, each taking any height and width, and a parity check of the exported file against
PyTorch that runs the file in its own runtime (ONNX Runtime for ONNX).

What is exported is `AnySizeStylizer(net)`: the network with the padding it needs done inside
the graph (reflect to a multiple of `pad_multiple`, as `Stylizer` pads, then cropped back), so
a user feeds a [1, 3, H, W] float image in [-1, 1] of any size from `pad_multiple + 1` px a
side (smaller images: pad them, or use `Stylizer`) and gets the same shape back. The padding
and the crop are index gathers (`index_select` of a computed index) rather than `F.pad` and
slicing: on symbolic sizes these need no shape guards, which is what lets `torch.export` keep
height and width dynamic.

The ONNX path needs the optional packages of the `export` extra (onnx, onnxscript; onnxruntime
for the parity check): a missing one is an `ImportError` naming the extra.
The stylizer file itself (save/load) is `portrait_toon.utils.generator_file`.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from portrait_toon.inference.tiling import pad_multiple

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "exported_program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}
#: Packages each format needs beyond torch, to export / to run the parity check.
EXPORT_PACKAGES = {"onnx": ("onnx", "onnxscript"), "torchscript": (), "exported_program": ()}
CHECK_PACKAGES = {"onnx": ("onnxruntime",), "torchscript": (), "exported_program": ()}
EXPORT_EXTRA_HINT = (
    "install the project's `export` extra: pip install -e '.[export]' (`make install` includes it)"
)
#: Two odd sizes (H, W) the parity check compares at: neither is a multiple of the grid.
CHECK_SIZES = ((67, 93), (130, 51))
CHECK_ATOL = 1e-4
MAX_SIDE = 16384
DEFAULT_OPSET = 18


class ExportCheckError(AssertionError):
    """An exported file whose output differs from PyTorch's beyond the tolerance."""


def require_packages(names: tuple[str, ...], purpose: str) -> None:
    """Import `names` or raise one ImportError that names the missing ones and the extra."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"{purpose} needs the optional package(s) {missing}: {EXPORT_EXTRA_HINT}")


def _reflect_index(length: torch.Tensor | int, padded: torch.Tensor | int, device) -> tuple:
    """Source index of each of `padded` positions reflecting an axis of `length` (the edge
    pixel not repeated, as F.pad reflect), and the padding before the image."""
    before = (padded - length) // 2
    index = (torch.arange(padded, device=device) - before).abs()
    index = torch.where(index >= length, 2 * (length - 1) - index, index)
    return index, before


class AnySizeStylizer(nn.Module):
    """`net` with reflect padding to its grid and the crop back inside the graph: [B, 3, H, W]
    in [-1, 1] -> the same shape, for H, W > `pad_multiple` (equals `net(x)` there)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.multiple = pad_multiple(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        m = self.multiple
        rows, top = _reflect_index(height, (height + m - 1) // m * m, x.device)
        cols, left = _reflect_index(width, (width + m - 1) // m * m, x.device)
        y = self.net(x.index_select(2, rows).index_select(3, cols))
        keep_rows = torch.arange(height, device=x.device) + top
        keep_cols = torch.arange(width, device=x.device) + left
        return y.index_select(2, keep_rows).index_select(3, keep_cols)


def min_side(net: nn.Module) -> int:
    """Smallest height/width an exported `net` takes (a grid of at least two cells)."""
    return pad_multiple(net) + 1


def export_program(
    net: nn.Module, example_size: tuple[int, int] = CHECK_SIZES[0]
) -> torch.export.ExportedProgram:
    """`torch.export` graph of `AnySizeStylizer(net)` for one image with dynamic height and
    width (from `min_side(net)` to 16384 px)."""
    net.eval()
    height, width = example_size
    low = min_side(net)
    if min(height, width) < low:
        raise ValueError(f"example_size {example_size}: sides must be >= {low}")
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros(1, 3, height, width, device=device)
    # named Dims: `Dim.DYNAMIC(min=, max=)` is torch >= 2.7 only (an enum member in 2.6)
    dims = {
        2: torch.export.Dim("height", min=low, max=MAX_SIDE),
        3: torch.export.Dim("width", min=low, max=MAX_SIDE),
    }
    with torch.no_grad():
        return torch.export.export(
            AnySizeStylizer(net),
            (example,),
            dynamic_shapes=(dims,),
            # sizes the solver cannot reason about become checks in the graph, not errors
            prefer_deferred_runtime_asserts_over_guards=True,
        )


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    example_size: tuple[int, int] = CHECK_SIZES[0],
    *,
    opset: int = DEFAULT_OPSET,
    program: torch.export.ExportedProgram | None = None,
) -> Path:
    """Export to ONNX: input `image` [1, 3, H, W] in [-1, 1] RGB (H, W dynamic), output
    `stylized` of the same shape. A net with a colour look-up table (`UNet(color_lut=...)`)
    is exported at opset 20 at least: its 3-D `GridSample` needs it. `program`: the net's
    `export_program`, when already made."""
    require_packages(EXPORT_PACKAGES["onnx"], "ONNX export")
    if getattr(net, "color_lut", None) is not None:
        opset = max(opset, 20)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if program is None:
        program = export_program(net, example_size)
    torch.onnx.export(
        program,
        input_names=["image"],
        output_names=["stylized"],
        dynamic_shapes=({2: "height", 3: "width"},),
        f=str(path),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    return path


def export_torchscript(
    net: nn.Module, path: str | os.PathLike, example_size: tuple[int, int] = CHECK_SIZES[0]
) -> Path:
    """Trace `AnySizeStylizer(net)` to TorchScript (`torch.jit.load` runs it, any size)."""
    net.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros(1, 3, *example_size, device=device)
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(AnySizeStylizer(net), (example,), check_trace=False)
    traced.save(str(path))
    return path


def export_stylizer(
    net: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write `net` in format `fmt` (one of `FORMATS`) to `path`."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {FORMATS}")
    if fmt == "onnx":
        return export_onnx(net, path, opset=opset)
    if fmt == "torchscript":
        return export_torchscript(net, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(export_program(net), str(path))
    return path


def check_export(
    net: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    *,
    sizes: tuple[tuple[int, int], ...] = CHECK_SIZES,
    atol: float = CHECK_ATOL,
) -> dict[str, float]:
    """Run the exported file in its own runtime at `sizes` and compare with `net` in PyTorch.

    Returns the largest absolute difference per size ("67x93": ...); raises `ExportCheckError`
    when one exceeds `atol`, and ImportError (naming the extra) when the runtime is missing:
    the check never passes without having run.
    """
    require_packages(CHECK_PACKAGES[fmt], f"the {fmt} parity check")
    run = _runner(Path(path), fmt)
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    differences = {}
    for height, width in sizes:
        image = _check_image(height, width)
        with torch.no_grad():
            expected = net(image.to(device)).float().cpu().numpy()
        got = run(image)
        if got.shape != expected.shape:
            raise ExportCheckError(
                f"{path}: output {got.shape} for an input of {tuple(image.shape)}"
            )
        differences[f"{height}x{width}"] = float(np.abs(got - expected).max())
    worst = max(differences.values())
    if not worst <= atol:  # also catches NaN
        raise ExportCheckError(
            f"{path}: the {fmt} output differs from PyTorch's by up to {worst:.3g} (> {atol}) "
            f"at sizes {differences}"
        )
    return differences


def _runner(path: Path, fmt: str):
    """A function running the exported file: float [1, 3, H, W] tensor -> numpy array."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x.numpy()})[0]
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).float().cpu().numpy()

    return run


def _check_image(height: int, width: int) -> torch.Tensor:
    """A fixed test image in [-1, 1]: smooth gradients plus noise (structure at every scale)."""
    generator = torch.Generator().manual_seed(height * 100_003 + width)
    yy = torch.linspace(-1, 1, height)[:, None].expand(height, width)
    xx = torch.linspace(-1, 1, width)[None, :].expand(height, width)
    base = torch.stack([xx, yy, (xx + yy) / 2]) * 0.8
    noise = torch.randn(3, height, width, generator=generator) * 0.15
    return (base + noise).clamp(-1, 1)[None]


class _quiet_tracer:
    """Silences the tracer's warnings about Python ints from tensor sizes: the wrapper's
    padding is an index gather, so those values do not change the traced graph's meaning."""

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)

    def __exit__(self, *exc):
        return self._catcher.__exit__(*exc)
