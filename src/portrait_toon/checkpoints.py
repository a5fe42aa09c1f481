"""Loading public checkpoints safely (weights_only unpickling, safetensors), unwrapping their
containers, and strict loading with one readable mismatch report. The table of known weight
files and the weights-folder lookup live in `weights_registry.py`.

Nothing here ever unpickles arbitrary code: a file that needs it is refused with `CheckpointError`.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# MissingWeightsError and resolve_weight are re-exported: callers find a file and load it together.
from portrait_toon.weights_registry import (  # noqa: F401
    MissingWeightsError,
    describe_source,
    resolve_weight,
)

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# Wrappers whose prefix is on every key: DataParallel/DDP ("module.") and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
DEFAULT_PREFER = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "g_ema",
    "generator",
    "g",
    "params_ema",
    "params",
)
_SHOW = 8  # how many names of each kind a mismatch report lists


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or does not hold what was asked for."""


class CheckpointMismatchError(CheckpointError):
    """A state_dict does not fit a module (missing/unexpected keys, shape mismatches)."""

    def __init__(
        self,
        message: str,
        *,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        hints: list[str],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        self.hints = hints


# ---------------------------------------------------------------------------------------------
# Reading files


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """The top-level dict of a checkpoint file: a state_dict or a container of them.

    `.pt/.pth/.ckpt/.bin`: `torch.load(weights_only=True)`; the only extra type allowed is
    `argparse.Namespace` (the `args` of rosinality train checkpoints). A file whose unpickling
    would need any other code is refused with `CheckpointError` and nothing of it runs.
    `.safetensors`: read with safetensors (a flat dict of tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"Checkpoint not found: {path.resolve()}\n{describe_source(path.name)}"
        )
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        obj: Any = _load_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        obj = _load_torch(path)
    else:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type '{suffix}' (expected one of "
            f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))})"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a dict of tensors; save "
            "`module.state_dict()` (or a dict of state_dicts) instead of a whole module"
        )
    return dict(obj)


def _load_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text})") from None
        reason = _weights_only_reason(text)
        raise CheckpointError(
            f"{path}: refused - untrusted pickle. Unpickling it would need code beyond plain "
            f"tensors/containers ({reason}), and running code from a checkpoint file is unsafe. "
            "Nothing from the file was executed. If you trust its origin, re-save it as a plain "
            "state_dict (`torch.save(model.state_dict(), ...)`) or as .safetensors and load that."
        ) from None
    # Random or truncated bytes can break the weights-only unpickler in arbitrary ways
    # (IndexError on an empty stack, KeyError on an unknown opcode, ...): all mean "corrupt".
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint - truncated or corrupt download? ({err})"
        ) from None


def _weights_only_reason(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.rstrip(".")
    return "unsupported pickle content"


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


# ---------------------------------------------------------------------------------------------
# Containers


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping from str to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def strip_wrapper_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove a DataParallel (`module.`) or torch.compile (`_orig_mod.`) prefix on every key."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def extract_state_dict(
    obj: Any, prefer: Iterable[str] = DEFAULT_PREFER, prefix: str | None = None
) -> dict[str, Tensor]:
    """The state_dict inside a loaded checkpoint.

    `obj` is a bare state_dict or a container: the first key of `prefer` that holds one is
    used (Lightning `{"state_dict": ...}`, rosinality `{"g_ema": ...}`, JoJoGAN `{"g": ...}`).
    Wrapper prefixes (`module.`) are stripped. `prefix` then keeps only the keys under it and
    strips it (e.g. `prefix="net_ema."` for one sub-module of a Lightning checkpoint).
    """
    prefer = tuple(prefer)
    state = _find_state_dict(obj, prefer, depth=0)
    if state is None:
        keys = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"no state_dict found: top-level keys {keys}; looked for a dict of tensors at the "
            f"top or under one of {list(prefer)}"
        )
    state = strip_wrapper_prefix(state)
    if prefix:
        selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not selected:
            firsts = sorted({k.split(".", 1)[0] + "." for k in state})[:20]
            raise CheckpointError(f"no keys start with '{prefix}'; key prefixes present: {firsts}")
        state = selected
    return state


def _find_state_dict(obj: Any, prefer: tuple[str, ...], depth: int) -> dict[str, Tensor] | None:
    if is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    for key in prefer:
        if key in obj:
            found = _find_state_dict(obj[key], prefer, depth + 1)
            if found is not None:
                return found
    return None


_SG2_PARTS = ("g_ema", "g", "d")


def load_stylegan2_checkpoint(path: str | Path) -> dict[str, Any]:
    """A rosinality StyleGAN2 file as `{"g_ema", "g", "d", "latent_avg"}` (missing parts None).

    Understands converted files `{g_ema, latent_avg[, g, d]}`, train.py checkpoints
    `{g, d, g_ema, g_optim, d_optim, args, ada_aug_p}`, JoJoGAN style files `{g}`, bare
    generator or discriminator state_dicts, flat safetensors with `g_ema.`-style prefixes, and
    `module.` prefixes. `g_ema` is what a generator should load: when the file has none it
    falls back to `g` (logged).
    """
    path = Path(path)
    obj = load_state_dict_file(path)
    parts: dict[str, Any] = {"g_ema": None, "g": None, "d": None, "latent_avg": None}
    if is_state_dict(obj) and not _has_container_prefixes(obj):
        state = strip_wrapper_prefix(obj)
        kind = _sg2_kind(state)
        if kind is None:
            raise CheckpointError(
                f"{path}: a state_dict, but neither a StyleGAN2 generator (style.N.*, to_rgbs.*) "
                f"nor a discriminator (convs.*, final_linear.*); first keys {list(state)[:6]}"
            )
        parts["g_ema" if kind == "generator" else "d"] = state
        return parts
    if is_state_dict(obj):  # flat file (safetensors) with g_ema./d./latent_avg keys
        obj = _unflatten_parts(obj)
    for name in _SG2_PARTS:
        if name in obj:
            parts[name] = extract_state_dict(obj[name], prefer=("state_dict",))
    latent_avg = obj.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise CheckpointError(
            f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, not a tensor"
        )
    parts["latent_avg"] = latent_avg
    if parts["g_ema"] is None and parts["g"] is None and parts["d"] is None:
        raise CheckpointError(
            f"{path}: no StyleGAN2 weights found; expected 'g_ema', 'g' or 'd' among the "
            f"top-level keys, found {list(obj)[:20]}"
        )
    if parts["g_ema"] is None and parts["g"] is not None:
        log.info("%s has no 'g_ema'; using its 'g' weights for the generator", path)
        parts["g_ema"] = parts["g"]
    return parts


def _has_container_prefixes(state: Mapping[str, Tensor]) -> bool:
    return any(k.split(".", 1)[0] in _SG2_PARTS for k in state) or "latent_avg" in state


def _unflatten_parts(state: Mapping[str, Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in _SG2_PARTS and rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return out


def _sg2_kind(state: Mapping[str, Tensor]) -> str | None:
    if any(k.startswith("style.") for k in state) or any(k.startswith("to_rgbs.") for k in state):
        return "generator"
    if any(k.startswith("final_linear.") for k in state) or any(
        k.startswith("convs.") for k in state
    ):
        return "discriminator"
    return None


# ---------------------------------------------------------------------------------------------
# Strict loading with a readable report


def load_into(
    module: nn.Module, state_dict: Mapping[str, Tensor], *, source: str | Path, expected: str
) -> nn.Module:
    """`module.load_state_dict(state_dict, strict=True)`, or one `CheckpointMismatchError`
    naming `source` and `expected` and listing missing, unexpected and shape-mismatched keys
    (the first few of each, with counts) plus hints about what the file probably is."""
    check_fits(module.state_dict(), state_dict, source=source, expected=expected)
    module.load_state_dict(state_dict, strict=True)
    return module


def check_fits(
    own: Mapping[str, Tensor],
    state_dict: Mapping[str, Tensor],
    *,
    source: str | Path,
    expected: str,
) -> None:
    """`load_into`'s check alone: raise its `CheckpointMismatchError` unless `state_dict` has
    exactly the keys of `own` (a module's `state_dict()`) with the same shapes. Nothing is
    copied into the module (key names and shapes only)."""
    non_tensor = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if non_tensor:
        raise CheckpointError(
            f"{source}: expected a state_dict for {expected}, got a container with "
            f"non-tensor entries {non_tensor[:_SHOW]}; unwrap it with extract_state_dict() "
            "(or load_stylegan2_checkpoint() for StyleGAN2 files)"
        )
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        hints = _mismatch_hints(own, state_dict, missing, unexpected, mismatched, expected)
        lines = [f"checkpoint {source} does not fit {expected}:"]
        if missing:
            lines.append(
                f"  missing keys ({len(missing)} of {len(own)} the model expects): "
                + _listing(missing)
            )
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)} of {len(state_dict)} in the file): "
                + _listing(unexpected)
            )
        if mismatched:
            shown = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in mismatched[:_SHOW]]
            more = f"; ... {len(mismatched) - _SHOW} more" if len(mismatched) > _SHOW else ""
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(shown) + more)
        lines.extend(f"  hint: {h}" for h in hints)
        raise CheckpointMismatchError(
            "\n".join(lines),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
            hints=hints,
        )


def _listing(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def checkpoint_family(keys: Iterable[str]) -> str | None:
    """A guess at which public architecture a set of state_dict keys belongs to."""
    keys = list(keys)
    key_set = set(keys)

    def any_prefix(p: str) -> bool:
        return any(k.startswith(p) for k in keys)

    if any_prefix("style.") and any_prefix("to_rgbs."):
        size = _sg2_generator_size(keys)
        return f"rosinality StyleGAN2 generator ({size} px)" if size else "StyleGAN2 generator"
    if any_prefix("final_linear.") or (any_prefix("convs.") and any_prefix("final_conv.")):
        size = _sg2_discriminator_size(keys)
        return f"rosinality StyleGAN2 discriminator ({size} px)" if size else "StyleGAN2 D"
    if "cp.resnet.conv1.weight" in key_set:
        return "face-parsing BiSeNet (ResNet-18)"
    if any_prefix("detail.") and any_prefix("segment."):
        return "CoinCheung BiSeNetV2 (Cityscapes classes, not a face parser)"
    if "block_a.0.1.weight" in key_set:
        return "AnimeGANv2 generator"
    if "features.0.weight" in key_set:
        convs = sum(1 for k in keys if k.startswith("features.") and k.endswith(".weight"))
        return {13: "VGG16 (torchvision)", 16: "VGG19 (torchvision)"}.get(
            convs, f"VGG, {convs} convs"
        )
    if any_prefix("lin0.model.") or any_prefix("lins."):
        return "LPIPS linear calibration layers"
    return None


_G_CONV = re.compile(r"^convs\.(\d+)\.")
_D_BLOCK = re.compile(r"^convs\.(\d+)\.conv1\.")


def _sg2_generator_size(keys: Iterable[str]) -> int | None:
    # Two convs per resolution from 8 px: n convs -> 2 ** (n / 2 + 2) px.
    idx = [int(m.group(1)) for k in keys if (m := _G_CONV.match(k))]
    return 2 ** ((max(idx) + 1) // 2 + 2) if idx else None


def _sg2_discriminator_size(keys: Iterable[str]) -> int | None:
    # convs.0 is the fromRGB layer, then one ResBlock per halving down to 4 px.
    idx = [int(m.group(1)) for k in keys if (m := _D_BLOCK.match(k))]
    return 2 ** (max(idx) + 2) if idx else None


def _mismatch_hints(
    own: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    expected: str,
) -> list[str]:
    hints: list[str] = []
    file_family, model_family = checkpoint_family(state), checkpoint_family(own)
    if file_family and model_family and file_family != model_family:
        hints.append(
            f"the file looks like a {file_family} checkpoint; the model is a {model_family}"
        )
        file_size = _sg2_generator_size(state) or _sg2_discriminator_size(state)
        model_size = _sg2_generator_size(own) or _sg2_discriminator_size(own)
        if "StyleGAN2" in file_family and "StyleGAN2" in model_family and file_size:
            hints.append(
                f"the file is a {file_size} px StyleGAN2 and the model {model_size} px: build "
                f"the network with size={file_size}, or use a checkpoint trained at "
                f"{model_size} px"
            )
    elif file_family is None and model_family is not None and (missing and unexpected):
        hints.append(f"the file's keys do not look like a {model_family} checkpoint at all")
    prefix_hint = _prefix_hint(missing, unexpected)
    if prefix_hint:
        hints.append(prefix_hint)
    if mismatched:
        hints.extend(_shape_hints(mismatched))
    return hints


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str | None:
    if not missing or not unexpected:
        return None
    missing_set = set(missing)
    for key in unexpected[:50]:
        head, _, rest = key.partition(".")
        if rest in missing_set:
            prefix = head + "."
            if sum(
                k.startswith(prefix) and k[len(prefix) :] in missing_set for k in unexpected
            ) >= (0.5 * len(missing)):
                return (
                    f"the file's keys carry an extra '{prefix}' prefix (a wrapper module); "
                    f"use extract_state_dict(obj, prefix='{prefix}')"
                )
    for key in missing[:50]:
        head, _, rest = key.partition(".")
        if rest in set(unexpected):
            return (
                f"the model's keys have a '{head}.' prefix the file lacks: load into module.{head}"
            )
    return None


def _shape_hints(mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> list[str]:
    ratios: set[float] = set()
    dim0_only = True
    file_dim0: set[int] = set()
    model_dim0: set[int] = set()
    for _, file_shape, model_shape in mismatched:
        if len(file_shape) != len(model_shape):
            return []
        diff = [i for i, (a, b) in enumerate(zip(file_shape, model_shape)) if a != b]
        ratios.update(file_shape[i] / model_shape[i] for i in diff)
        if diff != [0]:
            dim0_only = False
        else:
            file_dim0.add(file_shape[0])
            model_dim0.add(model_shape[0])
    hints = []
    if ratios == {0.5}:
        hints.append(
            "every mismatched channel count is halved: the file comes from a narrower network "
            "(for StyleGAN2: channel_multiplier=1 where the model uses 2)"
        )
    elif ratios == {2.0}:
        hints.append(
            "every mismatched channel count is doubled: the file comes from a wider network "
            "(for StyleGAN2: channel_multiplier=2 where the model uses 1)"
        )
    if dim0_only and len(file_dim0) == 1 and len(model_dim0) == 1:
        hints.append(
            f"only the output size differs ({file_dim0.pop()} in the file vs "
            f"{model_dim0.pop()} in the model): build the model with that many classes/outputs"
        )
    return hints
