"""Build the compact golden set in tests/data/golden/ from the full golden files.

    python scripts/make_compact_golden.py [--full DIR] [--out DIR]

`--full` defaults to $PORTRAIT_TOON_SHARED/golden (the developer machines' full set, 21 MB),
`--out` to tests/data/golden. The cutting rule is `compact_golden` in tests/golden.py (README
section 5 there); a test checks that the committed files are exactly what this script writes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from golden import compact_golden  # noqa: E402

FILES = (
    "stylegan2_rosinality_256.pt",
    "bisenet_faceparsing_19.pt",
    "animegan2_generator.pt",
    "vgg19_torchvision.pt",
    "vgg16_torchvision.pt",
)


def default_full_dir() -> Path:
    shared = os.environ.get("PORTRAIT_TOON_SHARED", str(REPO_ROOT.parent / "shared"))
    return Path(shared) / "golden"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=Path, default=default_full_dir())
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "data" / "golden")
    args = parser.parse_args(argv)
    missing = [name for name in FILES if not (args.full / name).is_file()]
    if missing:
        print(f"make_compact_golden: {missing} not found in {args.full} (--full DIR)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        source = args.full / name
        full = torch.load(source, weights_only=True, map_location="cpu")
        compact = compact_golden(full, name)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        compact["meta.compact_of"] = f"{name} sha256 {digest}"
        torch.save(compact, args.out / name)
        size = (args.out / name).stat().st_size
        print(f"{name}: {source.stat().st_size:,} B -> {size:,} B ({len(compact)} entries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
