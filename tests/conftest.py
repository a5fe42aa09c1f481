"""Shared test set-up: quiet, offline, deterministic, 2 threads; paths to test data."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    """Key/shape manifests of the public checkpoints (copied into tests/data, always present)."""
    return TEST_DATA / "manifests"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Seeded upstream inputs/outputs; only in ../shared/golden, so tests skip without it."""
    path = SHARED_DIR / "golden"
    if not path.is_dir():
        pytest.skip(
            f"golden vectors not found at {path} (they live in ../shared/golden, "
            "outside a user's clone; set PORTRAIT_TOON_SHARED to point elsewhere)"
        )
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
