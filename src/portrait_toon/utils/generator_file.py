"""The shipped generator file: F_ema's weights plus what is needed to rebuild it without Hydra.

Format (a `torch.save` dict, loadable with `weights_only=True`):
`{"format": "portrait_toon.generator/1", "target": "portrait_toon.nets.unet.UNet",
"config": {constructor kwargs}, "state_dict": {...}, "meta": {...}}`.
`load_generator` also accepts a training checkpoint (`.ckpt`) of `StylizerModule` and takes its
EMA weights. Only classes under `portrait_toon.nets.` are rebuilt: a file cannot make us import
arbitrary code.
"""

from __future__ import annotations

import importlib
import inspect
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from portrait_toon.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)

GENERATOR_FORMAT = "portrait_toon.generator/1"
ALLOWED_PREFIX = "portrait_toon.nets."
EMA_PREFIX = "net_ema.module."


class GeneratorFileError(ValueError):
    """A generator file (or checkpoint) cannot be turned back into a network."""


def network_spec(net: nn.Module) -> tuple[str, dict[str, Any]]:
    """`(target, config)` that rebuild `net`: its class path and constructor kwargs.

    Uses `net.config` (our nets keep their constructor arguments there); a class without one
    must be constructible with no arguments.
    """
    cls = type(net)
    target = f"{cls.__module__}.{cls.__qualname__}"
    config = getattr(net, "config", None)
    if config is None:
        required = [
            name
            for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name != "self"
            and parameter.default is inspect.Parameter.empty
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]
        if required:
            raise GeneratorFileError(
                f"{target} has no `config` attribute and needs arguments {required}: "
                "give the class a `config` dict of its constructor kwargs to export it"
            )
        config = {}
    return target, dict(config)


def save_generator(path: str | Path, net: nn.Module, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `net` (fp32, CPU) as a standalone generator file, atomically."""
    target, config = network_spec(net)
    state = {key: value.detach().to("cpu", copy=True) for key, value in net.state_dict().items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": GENERATOR_FORMAT,
        "target": target,
        "config": config,
        "state_dict": state,
        "meta": dict(meta or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def build_network(target: str, config: Mapping[str, Any]) -> nn.Module:
    """Import `target` (a class under portrait_toon.nets) and call it with `config`."""
    if not target.startswith(ALLOWED_PREFIX):
        raise GeneratorFileError(
            f"refusing to build {target!r}: only classes under {ALLOWED_PREFIX} are allowed"
        )
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise GeneratorFileError(f"cannot import {target!r}: {error}") from error
    return cls(**dict(config))


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the stylization network from an exported file or a StylizerModule checkpoint.

    Returns the network in eval mode with the (EMA) weights loaded strictly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise GeneratorFileError(f"{path}: not a readable generator file ({error})") from error
    if not isinstance(payload, Mapping):
        raise GeneratorFileError(f"{path}: expected a dict, found {type(payload).__name__}")
    if payload.get("format") == GENERATOR_FORMAT:
        target, config, state = payload["target"], payload["config"], payload["state_dict"]
    elif "stylizer" in payload and "state_dict" in payload:
        info = payload["stylizer"]
        target, config = info["net_target"], info["net_config"]
        state = {
            key[len(EMA_PREFIX) :]: value
            for key, value in payload["state_dict"].items()
            if key.startswith(EMA_PREFIX)
        }
        if not state:
            raise GeneratorFileError(f"{path}: checkpoint holds no {EMA_PREFIX}* weights")
    else:
        raise GeneratorFileError(
            f"{path}: neither an exported generator (format {GENERATOR_FORMAT}) nor a "
            "StylizerModule checkpoint (keys 'stylizer' and 'state_dict')"
        )
    net = build_network(target, config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GeneratorFileError(
            f"{path}: weights do not fit {target}({config}): {len(missing)} missing "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )
    return net.to(map_location).eval()
