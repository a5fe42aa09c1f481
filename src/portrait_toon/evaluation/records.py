"""What a metrics record is made of: values made JSON-ready, the record written atomically, and
the training step of the file that was measured (metrics.json, ablation.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["checkpoint_step", "json_ready", "write_json"]


def json_ready(value: Any) -> Any:
    """`value` with tensors as numbers/lists and dict keys as strings (nested), for json."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (a reader never sees half a file)."""
    from portrait_toon.utils.files import atomic_write_bytes

    text = json.dumps(json_ready(data), indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def checkpoint_step(path: str | Path) -> int:
    """The training step a Lightning checkpoint or a stylizer file records (0 when unknown)."""
    from portrait_toon.checkpoints import load_state_dict_file

    try:
        content = load_state_dict_file(path)
    except Exception:  # noqa: BLE001 - only for the report; loading itself already succeeded
        return 0
    if "global_step" in content:  # Lightning checkpoint
        return int(content["global_step"])
    for key in ("meta", "metadata"):  # stylizer/generator export files
        metadata = content.get(key)
        if isinstance(metadata, dict) and "global_step" in metadata:
            return int(metadata["global_step"])
    return 0
