"""Golden conformance data: the golden-fill-v1 weight rule, loading and comparing golden files,
and the compact set a clone carries (tests/data/golden/README.md describes all three).

The rule rebuilds upstream-compatible weights from a key manifest alone, so a test can load them
into our modules with strict=True and compare forward outputs with the stored upstream outputs.
The full golden files (21 MB, on developer machines) are cut down by `compact_golden` into the
compact set in tests/data/golden/ (`python scripts/make_compact_golden.py`): big inputs become
their seeded draw, big outputs their statistics, a centre crop and a sparse grid sample.
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
        if _sha256(state[key]) != digest:
            bad.append(key)
    return bad


def load_golden(path: str | Path) -> dict:
    """A golden file: a flat dict of tensors, ints and strings, loaded safely. Inputs that a
    compact file stores as their seeded draw (`in.<name>.draw`) are drawn again and checked
    against their SHA-256, so tests read `in.<name>` from either kind of file."""
    golden = torch.load(path, weights_only=True, map_location="cpu")
    for key in [k for k in golden if k.startswith("in.") and k.endswith(".draw")]:
        name = key[: -len(".draw")]
        x = draw_input(golden[key], golden[f"{name}.shape"].tolist())
        if _sha256(x) != golden[f"{name}.sha256"]:
            raise RuntimeError(
                f"{path}: redrawing {name} ({golden[key]}) does not give the stored input: "
                "this torch's CPU random generator differs from the one the golden data was "
                "made with, so the golden-fill-v1 weights will not match either"
            )
        golden[name] = x
    return golden


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


def check_stats(
    actual: torch.Tensor,
    golden: dict,
    key: str,
    *,
    atol: float,
    rtol: float,
    std_atol: float = 1e-5,
) -> None:
    """Shape, per-channel mean/std (population), global mean/abs-max and, where stored, the
    centre crop of `actual` against the golden statistics `<key>.*` (README section 4);
    `atol`/`rtol` are the network's tolerance for the abs-max and the crop."""
    assert list(actual.shape) == golden[f"{key}.shape"].tolist(), key
    a64 = actual.double()
    torch.testing.assert_close(a64.mean(dim=(2, 3)), golden[f"{key}.nc_mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        a64.std(dim=(2, 3), unbiased=False), golden[f"{key}.nc_std"], atol=std_atol, rtol=1e-4
    )
    torch.testing.assert_close(a64.mean(), golden[f"{key}.global_mean"], atol=1e-5, rtol=0)
    tol = {"atol": atol, "rtol": rtol}
    torch.testing.assert_close(a64.abs().max(), golden[f"{key}.global_absmax"], **tol)
    if f"{key}.crop" in golden:
        torch.testing.assert_close(center_crop(actual, golden, key), golden[f"{key}.crop"], **tol)


def check_stored(
    actual: torch.Tensor,
    golden: dict,
    key: str,
    *,
    tol: dict,
    f16_tol: dict,
    std_atol: float = 1e-5,
) -> None:
    """Compare `actual` with whatever a full or compact golden file stores for `key`: the whole
    tensor (float32, or `.f16` under `f16_tol`), its statistics, centre crop and grid sample."""
    actual = actual.detach().float()
    checked = []
    if f"{key}.shape" in golden:
        assert list(actual.shape) == golden[f"{key}.shape"].tolist(), key
    if key in golden:
        torch.testing.assert_close(actual, golden[key], **tol, msg=key)
        checked.append("full")
    if f"{key}.f16" in golden:
        torch.testing.assert_close(actual, golden[f"{key}.f16"].float(), **f16_tol, msg=key)
        checked.append("f16")
    if f"{key}.nc_mean" in golden:
        check_stats(actual, golden, key, std_atol=std_atol, **tol)  # the crop too, if stored
        checked.append("stats")
    if f"{key}.crop" in golden:
        if "stats" not in checked:
            crop = center_crop(actual, golden, key)
            torch.testing.assert_close(crop, golden[f"{key}.crop"], **tol)
        checked.append("crop")
    for suffix, grid_tol in ((".grid", tol), (".grid.f16", f16_tol)):
        if f"{key}{suffix}" in golden:
            expected = golden[f"{key}{suffix}"].float()
            torch.testing.assert_close(grid_sample(actual, golden, key), expected, **grid_tol)
            checked.append(suffix)
    assert set(checked) - {"stats"}, f"golden has no values for {key} (only {checked})"


# ---------------------------------------------------------------------------------------------
# The compact set (tests/data/golden/, README section 5)

KEEP_BYTES = 80_000  # tensors up to this size are kept whole
SAMPLE_BYTES = 32_768  # about the size of one crop or grid sample that replaces a big tensor
MAX_SIDE = 17  # a grid sample takes at most this many rows and columns

# Inputs too big to keep, as their seeded draws (each file's `meta.inputs` says the same).
INPUT_DRAWS = {
    "bisenet_faceparsing_19.pt": {"in.x": "randn:7", "in.x2": "randn:8"},
    "animegan2_generator.pt": {
        "in.sq": "rand_pm1:11",
        "in.ns": "rand_pm1:11",
        "in.odd": "rand_pm1:13",
    },
    "vgg19_torchvision.pt": {"in.x": "randn:5"},
    "vgg16_torchvision.pt": {"in.x": "randn:5"},
}


def draw_input(draw: str, shape: list[int]) -> torch.Tensor:
    """`randn:<seed>` = randn(shape) or `rand_pm1:<seed>` = rand(shape) * 2 - 1, each from a
    fresh CPU generator seeded with <seed>, as the golden inputs were drawn."""
    kind, seed = draw.split(":")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if kind == "randn":
        return torch.randn(shape, generator=gen, dtype=torch.float32)
    if kind == "rand_pm1":
        return torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1
    raise ValueError(f"unknown input draw {draw!r} (expected randn:<seed> or rand_pm1:<seed>)")


def grid_sample(actual: torch.Tensor, golden: dict, key: str) -> torch.Tensor:
    """The rows/columns of `actual` that the golden file samples as `<key>.grid`."""
    rows, cols = golden[f"{key}.grid_rows"], golden[f"{key}.grid_cols"]
    return actual.index_select(-2, rows).index_select(-1, cols)


def compact_golden(full: dict, filename: str) -> dict:
    """The compact form of a full golden file (README section 5).

    Tensors up to KEEP_BYTES, strings and ints are kept as they are, and so are label maps
    (`*.argmax`: compared exactly, pixel by pixel). A bigger input becomes its draw, shape and
    SHA-256 (the draw is checked here against the stored input). A bigger output keeps, or gains,
    its statistics (shape, per-channel mean/std, global mean/abs-max) and a centre crop, and
    gains a grid sample: every channel at evenly spread rows and columns, first and last
    included, so border handling is checked as well as the centre.
    """
    out: dict = {}
    big = [
        k for k, v in full.items() if torch.is_tensor(v) and _nbytes(v) > KEEP_BYTES
        and not k.endswith(".argmax")
    ]  # fmt: skip
    for key, value in full.items():
        if key not in big:
            out[key] = value.clone() if torch.is_tensor(value) else value
    for key in big:
        value = full[key]
        if key.startswith("in."):
            draw = INPUT_DRAWS.get(filename, {}).get(key)
            if draw is None or not torch.equal(draw_input(draw, list(value.shape)), value):
                raise ValueError(f"{filename}: {key} is too big to keep and has no known draw")
            out[f"{key}.draw"] = draw
            out[f"{key}.shape"] = torch.tensor(list(value.shape))
            out[f"{key}.sha256"] = _sha256(value)
        elif key.endswith(".crop"):
            _shrink_crop(out, full, key[: -len(".crop")])
        elif value.dim() == 4:
            _summarise(out, full, key)
        else:
            raise ValueError(f"{filename}: no compact form for {key} {tuple(value.shape)}")
    return out


def _summarise(out: dict, full: dict, key: str) -> None:
    """Statistics, centre crop and grid sample of the activation stored under `key`."""
    is_f16 = key.endswith(".f16")
    base = key[: -len(".f16")] if is_f16 else key
    value = full[key]
    exact = value.float()
    if f"{base}.nc_mean" not in full:
        if is_f16:
            raise ValueError(f"{key}: a float16 tensor without float32 statistics")
        a64 = exact.double()
        out[f"{base}.shape"] = torch.tensor(list(value.shape))
        out[f"{base}.nc_mean"] = a64.mean(dim=(2, 3))
        out[f"{base}.nc_std"] = a64.std(dim=(2, 3), unbiased=False)
        out[f"{base}.global_mean"] = a64.mean()
        out[f"{base}.global_absmax"] = a64.abs().max()
    planes = value.shape[0] * value.shape[1]
    height, width = value.shape[-2:]
    if f"{base}.crop" not in full and not is_f16:
        side = min(_side(planes), height, width)
        top, left = (height - side) // 2, (width - side) // 2
        out[f"{base}.crop"] = exact[..., top : top + side, left : left + side].clone()
        out[f"{base}.crop_top_left"] = torch.tensor([top, left])
    side = max(2, min(_side(planes), MAX_SIDE))
    rows = torch.linspace(0, height - 1, min(side, height)).round().long().unique()
    cols = torch.linspace(0, width - 1, min(side, width)).round().long().unique()
    sample = value.index_select(-2, rows).index_select(-1, cols).clone()
    out[f"{base}.grid.f16" if is_f16 else f"{base}.grid"] = sample
    out[f"{base}.grid_rows"], out[f"{base}.grid_cols"] = rows, cols


def _shrink_crop(out: dict, full: dict, base: str) -> None:
    """A smaller centre window of a stored crop that is too big, with its new top-left."""
    crop = full[f"{base}.crop"]
    height, width = crop.shape[-2:]
    side = min(_side(crop.shape[0] * crop.shape[1]), height, width)
    top, left = (height - side) // 2, (width - side) // 2
    out[f"{base}.crop"] = crop[..., top : top + side, left : left + side].clone()
    out[f"{base}.crop_top_left"] = full[f"{base}.crop_top_left"] + torch.tensor([top, left])


def _side(planes: int) -> int:
    """Side of a square window over `planes` channel maps that fits in SAMPLE_BYTES (>= 2)."""
    return max(2, math.isqrt(SAMPLE_BYTES // (4 * planes)))


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
