"""Synthetic pairs on disk: one `shard_NNNNNN.pt` per block of consecutive pair indices plus a
JSON manifest (format, index range, resolved synthesis config). Written atomically, resumable.

A shard is `torch.save` of a dict of CPU tensors (pairs along dim 0):
`src`, `tgt` uint8 [N,3,H,W] (images mapped from [-1, 1]), `head_mask`, `skin_mask` uint8
[N,1,H,W] (masks mapped from [0, 1]), `is_cutface` bool [N], `index` int64 [N]. A shard exists
under its final name only once it is complete (temp file, fsync, rename), so a crash never
leaves a half shard that counts; a rerun skips the finished ones.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = "portrait_toon.pairs.v1"
MANIFEST_NAME = "manifest.json"
SHARD_KEYS: tuple[str, ...] = ("src", "tgt", "head_mask", "skin_mask", "is_cutface", "index")
IMAGE_KEYS: tuple[str, ...] = ("src", "tgt")
MASK_KEYS: tuple[str, ...] = ("head_mask", "skin_mask")
# manifest fields that must agree before a rerun may add shards to an existing folder
FINGERPRINT_KEYS: tuple[str, ...] = ("format", "num_pairs", "index_start", "shard_size", "config")
_TEMP_MARK = ".tmp-"


class ShardsError(RuntimeError):
    """A shard folder that cannot be read or extended; the message says what to do."""


# --------------------------------------------------------------------------------------------
# layout
def num_shards(num_pairs: int, shard_size: int) -> int:
    """How many shards hold `num_pairs` pairs (the last one may be short)."""
    if num_pairs < 0 or shard_size <= 0:
        raise ValueError(
            f"num_pairs must be >= 0 and shard_size > 0, got {num_pairs}, {shard_size}"
        )
    return (num_pairs + shard_size - 1) // shard_size


def shard_indices(shard_id: int, shard_size: int, num_pairs: int, index_start: int = 0) -> range:
    """The pair indices stored in shard `shard_id`."""
    if not 0 <= shard_id < num_shards(num_pairs, shard_size):
        raise ValueError(f"shard {shard_id} is outside 0..{num_shards(num_pairs, shard_size) - 1}")
    first = shard_id * shard_size
    return range(index_start + first, index_start + min(first + shard_size, num_pairs))


def shard_range(total_shards: int, worker: int, num_workers: int) -> range:
    """The contiguous block of shard ids that process `worker` of `num_workers` writes.

    The blocks of workers 0..num_workers-1 partition 0..total_shards-1 (no gap, no overlap),
    so independent processes (one per GPU or node) can fill one folder together.
    """
    if num_workers <= 0 or not 0 <= worker < num_workers:
        raise ValueError(f"worker must be in 0..num_workers-1, got worker={worker}, {num_workers=}")
    return range(total_shards * worker // num_workers, total_shards * (worker + 1) // num_workers)


def shard_name(shard_id: int) -> str:
    return f"shard_{shard_id:06d}.pt"


def shard_id_of(path: Path) -> int | None:
    """The shard id a final shard file name encodes (None for other files)."""
    name = path.name
    if not (name.startswith("shard_") and name.endswith(".pt")) or _TEMP_MARK in name:
        return None
    digits = name[len("shard_") : -len(".pt")]
    return int(digits) if digits.isdigit() else None


def finished_shards(root: str | os.PathLike[str]) -> set[int]:
    """Ids of the complete shards in `root` (files under their final name)."""
    root = Path(root)
    if not root.is_dir():
        return set()
    return {sid for p in root.iterdir() if (sid := shard_id_of(p)) is not None}


def stale_temp_files(root: str | os.PathLike[str], shard_ids: Iterable[int]) -> list[Path]:
    """Temp files left by an interrupted write of the given shards."""
    root = Path(root)
    prefixes = tuple(shard_name(s) + _TEMP_MARK for s in shard_ids)
    if not root.is_dir() or not prefixes:
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(prefixes))


# --------------------------------------------------------------------------------------------
# encoding
def encode_pairs(pairs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Synthesizer output (float images in [-1, 1], masks in [0, 1]) -> compact CPU tensors."""
    missing = [k for k in SHARD_KEYS if k not in pairs]
    if missing:
        raise KeyError(f"encode_pairs: the pairs lack {missing} (expected {list(SHARD_KEYS)})")
    encoded: dict[str, torch.Tensor] = {}
    for key in IMAGE_KEYS:
        image = pairs[key].detach().float().cpu()
        encoded[key] = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for key in MASK_KEYS:
        mask = pairs[key].detach().float().cpu()
        encoded[key] = (mask.clamp(0, 1) * 255).round().to(torch.uint8)
    encoded["is_cutface"] = pairs["is_cutface"].detach().cpu().bool().reshape(-1)
    encoded["index"] = pairs["index"].detach().cpu().to(torch.int64).reshape(-1)
    return encoded


def decode_pairs(encoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `encode_pairs` on whatever device the tensors are: float images and masks."""
    decoded = dict(encoded)
    for key in IMAGE_KEYS:
        decoded[key] = encoded[key].float() / 127.5 - 1
    for key in MASK_KEYS:
        decoded[key] = encoded[key].float() / 255
    decoded["is_cutface"] = encoded["is_cutface"].bool()
    return decoded


def concat_pairs(chunks: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate encoded batches along the pair dimension."""
    return {k: torch.cat([c[k] for c in chunks]) for k in SHARD_KEYS}


# --------------------------------------------------------------------------------------------
# files
def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via `write(file)` to a temp name beside `path`, fsync, then rename over `path`."""
    temp = path.with_name(f"{path.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(3)}")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_shard(
    root: str | os.PathLike[str],
    shard_id: int,
    encoded: Mapping[str, torch.Tensor],
    expected_indices: range | None = None,
) -> Path:
    """Write one complete shard atomically; returns its path."""
    if expected_indices is not None:
        got = encoded["index"].tolist()
        if got != list(expected_indices):
            raise ShardsError(
                f"shard {shard_id}: holds indices {got[:3]}..{got[-3:]} "
                f"but should hold {expected_indices}"
            )
    path = Path(root) / shard_name(shard_id)
    payload = {k: encoded[k].contiguous() for k in SHARD_KEYS}
    _atomic_write_bytes(path, lambda handle: torch.save(payload, handle))
    return path


def read_shard(path: str | os.PathLike[str], mmap: bool = True) -> dict[str, torch.Tensor]:
    """Load a shard (tensors only: `weights_only=True`; memory-mapped by default)."""
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise ShardsError(
            f"cannot read shard {path}: {error}. Delete it and rerun synthesize.py with the "
            "same out_dir to rewrite it."
        ) from error
    missing = [k for k in SHARD_KEYS if k not in shard]
    if missing:
        raise ShardsError(f"shard {path} lacks {missing}: not written by this version")
    return shard


def write_manifest(root: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Create the manifest, or check that an existing one describes the same pairs.

    Several processes may start on one folder at once: each writes the same content
    atomically. An existing manifest whose fingerprint (format, index range, shard size,
    synthesis config) differs is an error, so shards of two configs never mix.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST_NAME
    if path.is_file():
        existing = read_manifest(root)
        differences = _differences(
            {k: existing.get(k) for k in FINGERPRINT_KEYS},
            {k: manifest.get(k) for k in FINGERPRINT_KEYS},
        )
        if differences:
            raise ShardsError(
                f"{path} describes other pairs than this run would write "
                f"(differences: {'; '.join(differences[:8])}). Use a new out_dir, or delete "
                "the folder to start over."
            )
        return path
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))
    return path


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard folder, checked for format; clear errors for missing folders."""
    root = Path(root)
    if not root.is_dir():
        raise ShardsError(
            f"no shard folder at {root}: write pairs first, e.g. "
            f"`python synthesize.py out_dir={root} num_pairs=10000`"
        )
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ShardsError(
            f"{root} has no {MANIFEST_NAME}: it was not written by synthesize.py "
            f"(write pairs with `python synthesize.py out_dir={root}`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ShardsError(
            f"{path} is not valid JSON ({error}); delete the folder and rerun"
        ) from error
    if manifest.get("format") != FORMAT:
        raise ShardsError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("num_pairs", "index_start", "shard_size"):
        if not isinstance(manifest.get(key), int):
            raise ShardsError(f"{path}: field {key!r} missing or not an integer")
    return manifest


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            found += _differences(old.get(key), new.get(key), where)
        return found
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
