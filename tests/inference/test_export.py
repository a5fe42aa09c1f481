"""Exports for other runtimes: any height and width, parity with PyTorch in the file's own
runtime (ONNX Runtime, TorchScript, torch.export) at odd sizes, and clear missing-package errors.

The ONNX test needs the `export` extra (make install has it): without it the test fails with
the install hint instead of skipping, so the parity check never passes unseen.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_nets import lut_unet, tiny_unet

from portrait_toon.inference.export import (
    CHECK_SIZES,
    AnySizeStylizer,
    ExportCheckError,
    check_export,
    export_onnx,
    export_program,
    export_stylizer,
    require_packages,
)
from portrait_toon.nets.unet import UNet


@pytest.fixture(scope="module")
def net() -> UNet:
    return lut_unet()  # convs and the colour look-up table (3-D GridSample): every op F uses


@pytest.fixture(scope="module")
def program(net: UNet) -> torch.export.ExportedProgram:
    return export_program(net)


def test_any_size_wrapper_equals_the_net() -> None:
    net = tiny_unet()
    wrapped = AnySizeStylizer(net)
    for height, width in [(67, 93), (130, 51), (64, 64), (9, 40)]:
        x = torch.rand(1, 3, height, width) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*treespec")
def test_onnx_parity_at_two_odd_sizes(
    tmp_path: Path, net: UNet, program: torch.export.ExportedProgram
) -> None:
    import onnx

    path = export_onnx(net, tmp_path / "f.onnx", program=program)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert "GridSample" in {node.op_type for node in model.graph.node}
    assert max(entry.version for entry in model.opset_import if entry.domain == "") >= 20
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3] and dims[2].dim_param and dims[3].dim_param
    differences = check_export(net, path, "onnx")  # ONNX Runtime vs PyTorch
    assert sorted(differences) == sorted(f"{h}x{w}" for h, w in CHECK_SIZES)
    assert max(differences.values()) <= 1e-4


def test_exported_program_parity(
    tmp_path: Path, net: UNet, program: torch.export.ExportedProgram
) -> None:
    path = tmp_path / "f.pt2"
    torch.export.save(program, str(path))
    differences = check_export(net, path, "exported_program", sizes=((67, 93), (130, 51), (64, 96)))
    assert max(differences.values()) <= 1e-5


def test_export_program_uses_no_dim_hint_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.6 (the floor in pyproject.toml) has `Dim.DYNAMIC` as a plain enum member, not
    callable with min/max: the export must not depend on it (named Dims work on every version)."""
    import enum

    Hint = enum.Enum("Hint", "AUTO STATIC DYNAMIC")  # torch 2.6's _DimHint, no __call__
    monkeypatch.setattr(torch.export.Dim, "DYNAMIC", Hint.DYNAMIC)
    net = tiny_unet()
    program = export_program(net)
    x = torch.rand(1, 3, 45, 70) * 2 - 1  # another size than the example's
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x), rtol=1e-5, atol=1e-5)


def test_torchscript_parity_and_a_wrong_file_is_caught(tmp_path: Path) -> None:
    net = tiny_unet()
    path = export_stylizer(net, tmp_path / "f.torchscript.pt", "torchscript")
    assert max(check_export(net, path, "torchscript").values()) <= 1e-5
    with pytest.raises(ExportCheckError, match="differs from PyTorch's by up to"):
        check_export(tiny_unet(seed=5), path, "torchscript")  # other weights: must fail


def test_missing_packages_name_the_extra(hide_packages, tmp_path: Path) -> None:
    hide_packages("onnxscript")
    with pytest.raises(ImportError, match=r"\['onnxscript'\].*pip install -e '\.\[export\]'"):
        export_onnx(tiny_unet(), tmp_path / "f.onnx")
    with pytest.raises(ImportError, match="export` extra"):
        require_packages(("onnx", "onnxscript"), "ONNX export")
    with pytest.raises(ValueError, match="format='tflite' is not one of"):
        export_stylizer(tiny_unet(), tmp_path / "f", "tflite")
