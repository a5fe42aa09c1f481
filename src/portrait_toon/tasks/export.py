"""The export task (what `export.py` runs): load F through `Stylizer`, write it as ONNX,
TorchScript or a `torch.export` program, and check the file against PyTorch in its runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from portrait_toon.config import ConfigError
from portrait_toon.inference.export import (
    CHECK_SIZES,
    EXPORT_PACKAGES,
    FORMATS,
    SUFFIXES,
    check_export,
    export_stylizer,
    require_packages,
)
from portrait_toon.inference.stylizer import Stylizer, resolve_checkpoint

logger = logging.getLogger(__name__)

USAGE = "python export.py ckpt=PATH format=onnx out=PATH"


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export `cfg.ckpt` in `cfg.format` to `cfg.out`; returns {"path", "format", "check"}
    (`check`: the largest difference from PyTorch per checked size, or None when off)."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise ConfigError(f"ckpt is required: the stylizer.pt, .ckpt or run folder. Usage: {USAGE}")
    fmt = str(cfg.get("format", "onnx"))
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose one of {list(FORMATS)}")
    try:
        source = resolve_checkpoint(cfg.ckpt)
    except FileNotFoundError as error:
        raise ConfigError(f"ckpt={cfg.ckpt}: {error}") from None
    # Missing packages are reported before the (slow) load and trace.
    require_packages(EXPORT_PACKAGES[fmt], f"format={fmt}")
    out = Path(cfg.out).expanduser() if cfg.get("out") else _default_out(source, fmt)
    stylizer = Stylizer.load(source, device="cpu")
    for chatty in ("onnx_ir", "onnxscript"):  # one INFO line per graph rewrite otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    path = export_stylizer(stylizer.net, out, fmt, opset=int(cfg.get("opset", 18)))
    logger.info("exported %s as %s to %s", source, fmt, path)
    check = None
    if cfg.get("check", True):
        check = check_export(stylizer.net, path, fmt, atol=float(cfg.get("atol", 1e-4)))
        sizes = ", ".join(f"{size}: {diff:.2g}" for size, diff in check.items())
        logger.info("parity with PyTorch at %s (max abs difference): %s", list(CHECK_SIZES), sizes)
    return {"path": str(path), "format": fmt, "check": check}


def _default_out(source: Path, fmt: str) -> Path:
    stem = source.name.split(".")[0]
    return source.with_name(stem + SUFFIXES[fmt])
