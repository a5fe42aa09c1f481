"""The golden-fill-v1 weight rule of ../shared/golden/README.md, and golden-file helpers.

Rebuilds upstream-compatible weights from a key manifest alone, so a test can load them into
our modules with strict=True and compare forward outputs with the stored upstream outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch


def _manifest_entries(manifest: dict) -> dict[str, dict]:
    return {**manifest.get("params", {}), **manifest.get("buffers", {})}


def fill_state_dict(
    manifest_path: str | Path,
    family: str,
    g2: float = 1.0,
    kernel: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Fill every manifest entry by golden-fill-v1 (family "R" rosinality or "P" plain layers).

    For family R, `kernel` is the constant blur buffer (K_up for G, K_down for D) given to every
    key ending in `.kernel`; it still consumes its index.
    """
    manifest = json.loads(Path(manifest_path).read_text())
    entries = _manifest_entries(manifest)
    state: dict[str, torch.Tensor] = {}
    for i, key in enumerate(manifest["state_dict_key_order"]):
        spec = entries[key]
        shape = tuple(spec["shape"])
        dtype = getattr(torch, spec["dtype"])
        gen = torch.Generator(device="cpu")
        gen.manual_seed(i)
        if family == "R":
            state[key] = _fill_rosinality(key, shape, gen, kernel)
        elif family == "P":
            state[key] = _fill_plain(key, shape, dtype, gen, g2)
        else:
            raise ValueError(f"unknown golden-fill family {family!r} (expected 'R' or 'P')")
    return state


def _fill_rosinality(key, shape, gen, kernel):
    if key.endswith(".kernel"):
        if kernel is None:
            raise ValueError(f"{key} needs the constant blur kernel (K_up for G, K_down for D)")
        return kernel.clone()
    n = torch.randn(shape, generator=gen, dtype=torch.float32)
    parts = key.split(".")
    if key.startswith("noises.noise_"):
        return n
    if parts[0] == "style" and parts[-1] == "weight":
        return n * 100.0
    if parts[0] == "style" and parts[-1] == "bias":
        return n * 10.0
    if key.endswith(".modulation.bias"):
        return n * 0.1 + 1.0
    if key.endswith(".noise.weight"):
        return n * 0.1
    if key.endswith(".bias"):
        return n * 0.1
    return n


def _fill_plain(key, shape, dtype, gen, g2):
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):  # the only row that uses U: N is not drawn first
        return torch.rand(shape, generator=gen, dtype=torch.float32) + 0.5
    n = torch.randn(shape, generator=gen, dtype=torch.float32)
    if key.endswith("running_mean"):
        return n * 0.1
    if key.endswith(".weight") and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return n * math.sqrt(g2 / fan_in)
    if key.endswith(".weight"):
        return n * 0.1 + 1.0
    if key.endswith(".bias"):
        return n * 0.1
    raise ValueError(f"golden-fill-v1 has no rule for {key}")


def sha256_mismatches(state: dict[str, torch.Tensor], fingerprints: str) -> list[str]:
    """Keys whose bytes differ from a `key<TAB>sha256` listing (empty when the rule is right)."""
    bad = []
    for line in fingerprints.strip().splitlines():
        key, digest = line.split("\t")
        got = hashlib.sha256(state[key].contiguous().numpy().tobytes()).hexdigest()
        if got != digest:
            bad.append(key)
    return bad


def load_golden(path: str | Path) -> dict:
    """A golden file: a flat dict of tensors, ints and strings, loaded safely."""
    return torch.load(path, weights_only=True, map_location="cpu")


def zeros_from_manifest(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict of zeros with every key, shape and dtype of a manifest, in its key order."""
    manifest = json.loads(Path(path).read_text())
    entries = _manifest_entries(manifest)
    return {
        key: torch.zeros(entries[key]["shape"], dtype=getattr(torch, entries[key]["dtype"]))
        for key in manifest["state_dict_key_order"]
    }


def center_crop(actual: torch.Tensor, golden: dict, key: str) -> torch.Tensor:
    """The window of `actual` that the golden file stores as `<key>.crop`."""
    crop = golden[f"{key}.crop"]
    top, left = golden[f"{key}.crop_top_left"].tolist()
    return actual[..., top : top + crop.shape[-2], left : left + crop.shape[-1]]


def check_stats(actual: torch.Tensor, golden: dict, key: str, *, atol: float, rtol: float) -> None:
    """Shape, per-channel mean/std (population), global mean/abs-max and, where stored, the
    centre crop of `actual` against the golden statistics `<key>.*` (README section 4);
    `atol`/`rtol` are the network's tolerance for the abs-max and the crop."""
    assert list(actual.shape) == golden[f"{key}.shape"].tolist(), key
    a64 = actual.double()
    torch.testing.assert_close(a64.mean(dim=(2, 3)), golden[f"{key}.nc_mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        a64.std(dim=(2, 3), unbiased=False), golden[f"{key}.nc_std"], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(a64.mean(), golden[f"{key}.global_mean"], atol=1e-5, rtol=0)
    tol = {"atol": atol, "rtol": rtol}
    torch.testing.assert_close(a64.abs().max(), golden[f"{key}.global_absmax"], **tol)
    if f"{key}.crop" in golden:
        torch.testing.assert_close(center_crop(actual, golden, key), golden[f"{key}.crop"], **tol)
