"""Shared test set-up: quiet, offline, deterministic, 2 threads; paths to test data."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"
# ../shared/ exists on developer machines and in CI, never in a user's clone.
SHARED_DIR = Path(os.environ.get("PORTRAIT_TOON_SHARED", REPO_ROOT.parent / "shared"))


def cuda_skip_reason() -> str | None:
    """Why tests marked `gpu` cannot run here, or None when a CUDA device is available."""
    if torch.cuda.is_available():
        return None
    build = torch.version.cuda
    found = (
        f"torch {torch.__version__} is a CPU-only build"
        if build is None
        else f"torch {torch.__version__} (CUDA {build}) finds no CUDA device"
    )
    return f"needs a CUDA device ({found}); `make gpu-check` runs these on a GPU machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are collected everywhere and skipped, with the reason, without CUDA."""
    reason = cuda_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    """Key/shape manifests of the public checkpoints (copied into tests/data, always present)."""
    return TEST_DATA / "manifests"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Seeded upstream inputs/outputs: the full set where it exists (SHARED_DIR/golden, on
    developer machines), else the compact set every clone carries (tests/data/golden)."""
    full = SHARED_DIR / "golden"
    return full if full.is_dir() else TEST_DATA / "golden"


@pytest.fixture(scope="session")
def full_golden_dir() -> Path:
    """The full golden set; only on developer machines, so the tests that need it skip without."""
    path = SHARED_DIR / "golden"
    if not path.is_dir():
        pytest.skip(
            f"full golden set not at {path} (developer machines only; set PORTRAIT_TOON_SHARED): "
            "the compact set in tests/data/golden is checked against it there"
        )
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def hide_packages(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """`hide_packages("onnx", ...)`: importlib.import_module (how the export code loads its
    optional packages) raises ImportError for those names until the test ends."""
    real_import = importlib.import_module

    def hide(*names: str) -> None:
        def import_module(name: str, *args):
            if name in names:
                raise ImportError(f"No module named '{name}'")
            return real_import(name, *args)

        monkeypatch.setattr(importlib, "import_module", import_module)

    return hide
