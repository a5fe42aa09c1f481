"""The shipped generator file: F_ema plus how to rebuild it without Hydra; loading it (or a
train.py Lightning checkpoint) safely. One format for everything that writes or reads it.

Format `portrait_toon.generator/1`:
- `.pt` (torch.save of plain containers, readable with `torch.load(weights_only=True)`):
  `{"format": "portrait_toon.generator/1", "target": "portrait_toon.nets.unet.UNet",
    "config": {...constructor kwargs...}, "state_dict": {...}, "meta": {...}}`
- `.safetensors`: the tensors of `state_dict`; `format` and `target` as string entries of the
  file's metadata header, `config` and `meta` as JSON strings there.
`target` is only ever resolved inside `ALLOWED_NET_PACKAGES` (the project's own networks), and
`config` may only hold plain values, so a file can never make us import or run arbitrary code.
A Lightning checkpoint of `training.stylizer.StylizerModule` is accepted too: its EMA weights
(`net_ema.module.*` keys) and the record `{"net_target", "net_config"}` that the module stores
under `checkpoint["stylizer"]`.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import io
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from portrait_toon.checkpoints import CheckpointError, load_into, load_state_dict_file
from portrait_toon.utils.files import atomic_write_bytes

logger = logging.getLogger(__name__)

GENERATOR_FORMAT = "portrait_toon.generator/1"
#: Packages whose nn.Module classes a stylizer file may name as its `target`.
ALLOWED_NET_PACKAGES: tuple[str, ...] = ("portrait_toon.nets",)
#: Key of the build record `{"net_target", "net_config"}` inside a Lightning checkpoint.
CHECKPOINT_RECORD_KEY = "stylizer"
#: Where the shipped network sits in a Lightning checkpoint's state_dict, most preferred first:
#: the EMA copy (wrapped by training.ema.ExponentialMovingAverage, then bare), then the raw net.
LIGHTNING_PREFIXES: tuple[str, ...] = ("net_ema.module.", "net_ema.", "net.")

_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_PLAIN_SCALARS = (str, int, float, bool, type(None))


class StylizerLoadError(CheckpointError):
    """A stylizer/checkpoint file that cannot be turned into a network; says which and why."""


# ------------------------------------------------------------------------------ build records


def net_target(net: nn.Module) -> str:
    """The dotted class name a file records for `net` (must be in the allow-list)."""
    cls = type(net)
    return f"{cls.__module__}.{cls.__qualname__}"


def net_config(net: nn.Module, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`net`'s constructor kwargs as plain values: `config`, else `net.config` (our nets keep
    their constructor arguments there)."""
    if config is None:
        config = getattr(net, "config", None)
    if config is None and not _required_arguments(type(net)):
        config = {}  # e.g. AnimeGAN's generator: a fixed architecture
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{type(net).__name__} has no `config` dict of constructor arguments "
            f"(it needs {_required_arguments(type(net))}); pass config= explicitly or give the "
            "class a `config` dict"
        )
    return _plain(dict(config), "config")


def _required_arguments(cls: type) -> list[str]:
    return [
        name
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
        and parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


def resolve_net_class(target: str) -> type[nn.Module]:
    """The class named by `target`, only if it is an nn.Module defined in an allowed package."""
    if not isinstance(target, str) or not _DOTTED_NAME.match(target):
        raise StylizerLoadError(f"network target {target!r} is not a dotted class name")
    module_name, _, class_name = target.rpartition(".")
    if not any(
        module_name == package or module_name.startswith(package + ".")
        for package in ALLOWED_NET_PACKAGES
    ):
        raise StylizerLoadError(
            f"network target {target!r} is outside the allowed packages "
            f"{list(ALLOWED_NET_PACKAGES)}; refusing to import it from a file"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise StylizerLoadError(
            f"network target {target!r}: module {module_name} cannot be imported ({error}); "
            "was the file written by a newer portrait_toon?"
        ) from error
    cls = getattr(module, class_name, None)
    # Defined in that module (not merely imported into it) and an nn.Module.
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == module_name):
        raise StylizerLoadError(f"network target {target!r} is not a network class of the project")
    return cls


def build_net(target: str, config: Mapping[str, Any], *, source: str | Path) -> nn.Module:
    """Instantiate an allowed network class from plain constructor arguments."""
    cls = resolve_net_class(target)
    if not isinstance(config, Mapping):
        raise StylizerLoadError(f"{source}: 'config' is a {type(config).__name__}, not a dict")
    try:
        return cls(**_plain(dict(config), "config"))
    except (TypeError, ValueError) as error:
        raise StylizerLoadError(
            f"{source}: cannot build {target} from the recorded config {dict(config)} ({error})"
        ) from error


# ----------------------------------------------------------------------------------- saving


def save_stylizer(
    path: str | os.PathLike,
    net: nn.Module,
    config: Mapping[str, Any] | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write `net` (usually F_ema; fp32, CPU) as a standalone generator file, atomically.

    `.safetensors` suffix: a safetensors file; anything else: a weights_only-safe torch file
    `config` defaults to `net.config`; `meta` (plain values: step, ...) is kept.
    """
    path = Path(path)
    target = net_target(net)
    resolve_net_class(target)  # fail at save time, not when a user loads the file
    plain_config = net_config(net, config)
    info = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
        **_plain(dict(meta or {}), "meta"),
    }
    state = {}
    for key, value in net.state_dict().items():
        value = value.detach().to("cpu", copy=True)
        state[key] = (value.float() if value.is_floating_point() else value).contiguous()
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        header = {
            "format": GENERATOR_FORMAT,
            "target": target,
            "config": json.dumps(plain_config),
            "meta": json.dumps(info),
        }
        data = save(state, metadata=header)
    else:
        payload = {
            "format": GENERATOR_FORMAT,
            "target": target,
            "config": plain_config,
            "state_dict": state,
            "meta": info,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
    atomic_write_bytes(path, data)
    logger.info("saved stylizer %s(%s) to %s", target, plain_config, path)
    return path


# ---------------------------------------------------------------------------------- loading

_Parts = tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]


def load_stylizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A ready network (eval mode, no grad, on `device`) from a generator file
    (`.pt`/`.safetensors`, see module doc) or a StylizerModule Lightning `.ckpt`.

    Files are read with `torch.load(weights_only=True)` or safetensors; anything else, an
    unknown layout or a target outside the allow-list raises `StylizerLoadError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"stylizer file not found: '{path}'; give ckpt=PATH to the stylizer.pt that "
            "training exports into its run folder, or to a Lightning .ckpt from train.py"
        )
    if path.suffix.lower() == ".safetensors":
        target, config, state, info = _read_safetensors_export(path)
    else:
        try:
            content = load_state_dict_file(path)
        except CheckpointError as error:
            raise StylizerLoadError(str(error)) from None
        target, config, state, info = _interpret(path, content)
    net = build_net(target, config, source=path)
    try:
        load_into(net, state, source=path, expected=target)
    except CheckpointError as error:
        raise StylizerLoadError(str(error)) from None
    net.requires_grad_(False)
    net.eval()
    logger.info("loaded %s from %s (%s)", target, path, info or "no meta")
    return net.to(device)


def _interpret(path: Path, content: Mapping[str, Any]) -> _Parts:
    if "format" in content:
        if content["format"] != GENERATOR_FORMAT:
            raise StylizerLoadError(
                f"{path}: format {content['format']!r} is not {GENERATOR_FORMAT!r}; "
                "was it written by a newer portrait_toon?"
            )
        missing = [k for k in ("target", "config", "state_dict") if k not in content]
        if missing:
            raise StylizerLoadError(f"{path}: generator file lacks {missing}")
        return (
            content["target"],
            content["config"],
            _tensors(path, content["state_dict"]),
            dict(content.get("meta") or {}),
        )
    if "state_dict" in content and (
        CHECKPOINT_RECORD_KEY in content or "pytorch-lightning_version" in content
    ):
        return _from_lightning(path, content)
    keys = list(content)[:10]
    raise StylizerLoadError(
        f"{path}: neither a portrait_toon generator file nor a train.py Lightning checkpoint "
        f"(top-level keys {keys}); export one with "
        "portrait_toon.utils.generator_file.save_stylizer(path, net)"
    )


def _from_lightning(path: Path, checkpoint: Mapping[str, Any]) -> _Parts:
    record = checkpoint.get(CHECKPOINT_RECORD_KEY)
    if not isinstance(record, Mapping) or "net_target" not in record or "net_config" not in record:
        raise StylizerLoadError(
            f"{path}: this Lightning checkpoint does not record how to build its network "
            f"(no '{CHECKPOINT_RECORD_KEY}' entry with net_target and net_config); use the "
            "stylizer.pt that training exports into its run folder instead"
        )
    state_dict = _tensors(path, checkpoint["state_dict"])
    for prefix in LIGHTNING_PREFIXES:
        selected = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not selected:
            continue
        if prefix == "net.":
            logger.warning("%s has no EMA weights (net_ema.*); using the raw net", path)
        # The EMA wrapper's own bookkeeping is not part of the network.
        selected.pop("num_updates", None)
        info = {
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            "weights": prefix.rstrip("."),
        }
        return record["net_target"], record["net_config"], selected, info
    prefixes = sorted({k.split(".", 1)[0] + "." for k in state_dict})
    raise StylizerLoadError(
        f"{path}: no network weights under {list(LIGHTNING_PREFIXES)}; "
        f"key prefixes present: {prefixes[:20]}"
    )


def _read_safetensors_export(path: Path) -> _Parts:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise StylizerLoadError(f"{path}: not a readable safetensors file ({error})") from None
    if header.get("format") != GENERATOR_FORMAT:
        raise StylizerLoadError(
            f"{path}: a safetensors file without the {GENERATOR_FORMAT!r} header (a bare "
            "state_dict does not say which network it belongs to); export with save_stylizer"
        )
    try:
        config = json.loads(header["config"])
        info = json.loads(header.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError) as error:
        raise StylizerLoadError(f"{path}: damaged generator header ({error})") from None
    return header.get("target", ""), config, state, info


def _tensors(path: Path, state: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise StylizerLoadError(f"{path}: 'state_dict' is not a dict of tensors")
    return dict(state)


def _plain(value: Any, where: str) -> Any:
    """`value` if it is made of JSON-like plain values only (what weights_only and JSON keep)."""
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    raise ValueError(
        f"{where} holds a {type(value).__name__}; only str/int/float/bool/None, lists and dicts "
        "can be stored (convert configs with OmegaConf.to_container)"
    )
