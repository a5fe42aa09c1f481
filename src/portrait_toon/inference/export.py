"""Optional exports of a trained stylizer for other runtimes: a `torch.export` program and ONNX.

The stylizer file itself (save/load, format `portrait_toon.generator/1`) is
`portrait_toon.utils.generator_file`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ONNX_INSTALL_HINT = "pip install onnx onnxscript"


# ------------------------------------------------------------------------------------- ONNX


def export_program(
    net: nn.Module, example_size: tuple[int, int] = (256, 256)
) -> torch.export.ExportedProgram:
    """`torch.export` graph of `net` for one image with dynamic height and width.

    Height and width must be multiples of the net's `pad_multiple` (32 by default): the net's
    own pad-to-a-multiple branch cannot be traced symbolically, so callers pad first, as
    `stylize_image` does.
    """
    multiple = int(getattr(net, "pad_multiple", 32))
    height, width = example_size
    if height % multiple or width % multiple:
        raise ValueError(f"example_size {example_size} must be multiples of {multiple}")
    rows = torch.export.Dim("rows", min=1, max=16384 // multiple)
    cols = torch.export.Dim("cols", min=1, max=16384 // multiple)
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    example = torch.zeros(1, 3, height, width, device=device)
    net.eval()
    return torch.export.export(
        net, (example,), dynamic_shapes=({2: multiple * rows, 3: multiple * cols},)
    )


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    example_size: tuple[int, int] = (256, 256),
    *,
    opset: int = 18,
) -> Path:
    """Export `net` to ONNX (input `image` [1, 3, H, W] in [-1, 1] RGB, H and W dynamic
    multiples of the net's `pad_multiple`; output `stylized`, same shape).

    Needs the optional packages onnx and onnxscript; without them this raises ImportError
    saying how to install them. A net with a colour look-up table (`UNet(color_lut=...)`) is
    exported at opset 20 at least: its 3-D `GridSample` needs it.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the optional packages onnx and onnxscript ({error}); "
            f"install them with `{ONNX_INSTALL_HINT}`"
        ) from None
    if getattr(net, "color_lut", None) is not None:
        opset = max(opset, 20)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(net, example_size)
    torch.onnx.export(
        program,
        input_names=["image"],
        output_names=["stylized"],
        f=str(path),
        opset_version=opset,
        dynamo=True,
    )
    return path
