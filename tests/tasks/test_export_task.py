"""export(cfg) in-process on conf/export.yaml: the file next to the checkpoint, its parity
check, and config mistakes named by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from portrait_toon.config import ConfigError, compose_config
from portrait_toon.nets.unet import UNet
from portrait_toon.tasks.export import export
from portrait_toon.utils.generator_file import save_stylizer

SMALL_UNET = {"base_channels": 8, "depth": 3, "channel_mult": [1, 2, 4]}


def compose(tmp_path: Path, *overrides: str):
    return compose_config("export", overrides, output_dir=tmp_path / "job")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = UNet(**SMALL_UNET).eval()
    save_stylizer(tmp_path / "run" / "stylizer.pt", net)
    return tmp_path / "run"


def test_torchscript_export_of_a_run_folder(tmp_path: Path, run_dir: Path) -> None:
    result = export(compose(tmp_path, f"ckpt={run_dir}", "format=torchscript"))
    path = Path(result["path"])
    assert path == run_dir / "stylizer.torchscript.pt" and path.is_file()
    assert set(result["check"]) == {"67x93", "130x51"}
    assert max(result["check"].values()) <= 1e-4
    module = torch.jit.load(str(path))
    assert module(torch.zeros(1, 3, 50, 70)).shape == (1, 3, 50, 70)


def test_config_errors_name_the_key(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt is required.*python export.py"):
        export(compose(tmp_path))
    with pytest.raises(ConfigError, match="format=tflite: choose one of"):
        export(compose(tmp_path, f"ckpt={run_dir}", "format=tflite"))
    with pytest.raises(ConfigError, match="ckpt=.*nowhere.*does not exist"):
        export(compose(tmp_path, f"ckpt={tmp_path / 'nowhere'}"))


def test_missing_onnx_packages_fail_before_loading(
    tmp_path: Path, run_dir: Path, hide_packages
) -> None:
    hide_packages("onnx")
    with pytest.raises(ImportError, match=r"format=onnx needs .*\['onnx'\].*\[export\]"):
        export(compose(tmp_path, f"ckpt={run_dir}", "format=onnx"))
    assert not (run_dir / "stylizer.onnx").exists()
