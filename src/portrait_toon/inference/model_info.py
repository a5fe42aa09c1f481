"""What a stylizer file is: where it comes from, what it was trained on, for how many steps, at
which resolution, and its run's held-out metrics, so a user knows what to expect from it.

Read from the file's own record (`meta` of a stylizer file, `global_step` of a Lightning
checkpoint) and from its train run folder when the file sits in one: the run's saved Hydra
config (`.hydra/config.yaml`) and `metrics.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

logger = logging.getLogger(__name__)

#: Synthesis components (by their class's module) that make up the embedded world: procedural
#: renderers and classical filters, no downloaded weights.
EMBEDDED_MODULES = (
    "portrait_toon.synthesis.procedural",
    "portrait_toon.synthesis.background.ClassicalToonStylizer",
    "portrait_toon.synthesis.background.IdentityStylizer",
    "portrait_toon.synthesis.mixers.NoMixer",
)
COMPONENTS = ("generator", "mixer", "segmenter", "bg_stylizer")
#: How far above the file a run folder may be (`<run>/stylizer.pt`,
#: `<run>/checkpoints/last.ckpt`).
_RUN_LEVELS = 2


def model_info(source: Path, net: nn.Module) -> dict[str, Any]:
    """A plain dict: `source`, `network`, `net_config`, `steps`, `run_dir`, `trained_on`
    ("embedded world", "real weights" or "unknown"), `components`, `experiment`,
    `resolution` and `metrics` (the run's metrics.json, or None)."""
    info: dict[str, Any] = {
        "source": str(source),
        "network": type(net).__name__,
        "net_config": dict(getattr(net, "config", {}) or {}),
        "steps": _steps(source),
        "run_dir": None,
        "trained_on": "unknown",
        "components": {},
        "experiment": None,
        "resolution": None,
        "metrics": None,
    }
    run_dir = _run_dir(source)
    if run_dir is None:
        return info
    info["run_dir"] = str(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    if config_path.is_file():
        info.update(_from_config(config_path))
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            info["metrics"] = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("cannot read %s (%s); metrics left out", metrics_path, error)
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for logs and pages: what the model is."""
    parts = [f"{info.get('network')} from {info.get('source')}"]
    if info.get("trained_on") != "unknown":
        parts.append(f"trained on the {info['trained_on']}")
    if info.get("steps") is not None:
        parts.append(f"{info['steps']} steps")
    if info.get("resolution"):
        parts.append(f"at {info['resolution']} px")
    metrics = info.get("metrics") or {}
    if "l1_output_target" in metrics and "l1_input_target" in metrics:
        parts.append(
            f"held-out L1 {metrics['l1_output_target']:.4f} vs {metrics['l1_input_target']:.4f} "
            "for the unchanged input"
        )
    return ", ".join(parts)


def _run_dir(source: Path) -> Path | None:
    folder = source.resolve().parent
    for _ in range(_RUN_LEVELS):
        if (folder / ".hydra" / "config.yaml").is_file() or (folder / "metrics.json").is_file():
            return folder
        folder = folder.parent
    return None


def _steps(source: Path) -> int | None:
    """Training steps recorded in the file (memory-mapped: only the small entries are read)."""
    try:
        if source.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(source), framework="pt", device="cpu") as handle:
                meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        else:
            content = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
            meta = content.get("meta") or {"global_step": content.get("global_step")}
    except Exception as error:  # noqa: BLE001 - the net loaded; its record is optional
        logger.debug("no step count from %s (%s)", source, error)
        return None
    for key in ("global_step", "step"):
        if isinstance(meta.get(key), int):
            return int(meta[key])
    return None


def _from_config(path: Path) -> dict[str, Any]:
    try:
        config = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 - a damaged side file must not stop inference
        logger.warning("cannot read %s (%s); training data left unknown", path, error)
        return {}
    components = {}
    for name in COMPONENTS:
        target = OmegaConf.select(config, f"{name}._target_", default=None)
        if isinstance(target, str):
            components[name] = target
    embedded = bool(components) and all(
        any(target == m or target.startswith(m + ".") for m in EMBEDDED_MODULES)
        for target in components.values()
    )
    resolution = _plain(config, "resolution")
    return {
        "trained_on": ("embedded world" if embedded else "real weights")
        if components
        else "unknown",
        "components": {name: target.rsplit(".", 1)[-1] for name, target in components.items()},
        "experiment": _plain(config, "task_name"),
        "resolution": resolution if isinstance(resolution, int) else None,
    }


def _plain(config: Any, key: str) -> Any:
    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:  # noqa: BLE001 - an interpolation needing Hydra's runtime: not known here
        return None
