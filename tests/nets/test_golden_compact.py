"""The compact golden set (tests/data/golden) that every clone checks the networks against:
small enough to carry, loadable safely, and exactly what scripts/make_compact_golden.py cuts
from the full set (checked where the full set exists)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from golden import check_stored, compact_golden, load_golden

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPACT_DIR = REPO_ROOT / "tests" / "data" / "golden"
COMPACT_BUDGET_BYTES = 8_000_000
EXACT = {"atol": 0.0, "rtol": 0.0}


def load_script():
    path = REPO_ROOT / "scripts" / "make_compact_golden.py"
    spec = importlib.util.spec_from_file_location("make_compact_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILES = load_script().FILES


def test_compact_set_is_complete_small_and_safe_to_load():
    sizes = {name: (COMPACT_DIR / name).stat().st_size for name in FILES}
    assert sum(sizes.values()) < COMPACT_BUDGET_BYTES, sizes
    for name in FILES:
        golden = load_golden(COMPACT_DIR / name)  # weights_only; redraws and checks the inputs
        assert golden["meta.compact_of"].startswith(f"{name} sha256 ")
        assert all(isinstance(v, torch.Tensor | int | str) for v in golden.values())


def test_compact_files_are_what_the_script_cuts_from_the_full_files(full_golden_dir):
    for name in FILES:  # one test, so a clone without the full set reports one skip
        check_compact_file(full_golden_dir / name, COMPACT_DIR / name)


def check_compact_file(source: Path, compact: Path) -> None:
    name = source.name
    full = torch.load(source, weights_only=True, map_location="cpu")
    committed = load_golden(compact)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert committed.pop("meta.compact_of") == f"{name} sha256 {digest}", (
        "the full file changed: rerun python scripts/make_compact_golden.py"
    )
    expected = compact_golden(full, name)
    redrawn = {k[: -len(".draw")] for k in expected if k.endswith(".draw")}
    for key in redrawn:  # load_golden put the redrawn inputs back: bitwise the stored ones
        assert torch.equal(committed.pop(key), full[key]), key
    assert sorted(committed) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert committed[key].dtype == value.dtype and torch.equal(committed[key], value), key
        else:
            assert committed[key] == value, key
    # every sample of a cut-down float32 output reads back exactly from the full tensor
    for key in {k[: -len(".grid")] for k in expected if k.endswith(".grid")}:
        check_stored(full[key], committed, key, tol=EXACT, f16_tol=EXACT)
