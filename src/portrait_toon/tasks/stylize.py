"""The stylize task (what `stylize.py` runs): load F (a `Stylizer`) and stylize a file or a
folder, with config mistakes turned into errors that name the key and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from portrait_toon.config import ConfigError
from portrait_toon.inference.folder import StylizeReport, stylize_paths
from portrait_toon.inference.model_info import describe
from portrait_toon.inference.stylizer import Stylizer, resolve_checkpoint

logger = logging.getLogger(__name__)

USAGE = "python stylize.py ckpt=PATH/stylizer.pt input=FILE_OR_FOLDER output=DIR"


def stylize(cfg: DictConfig) -> StylizeReport:
    """Stylize `cfg.input` into `cfg.output` with the network in `cfg.ckpt`; the report (also
    saved as `stylize_report.json` in the output folder) lists every file's outcome."""
    ckpt = _required(cfg, "ckpt")
    source = Path(_required(cfg, "input")).expanduser()
    output = Path(_required(cfg, "output")).expanduser()
    if not source.exists():
        raise ConfigError(f"input={source}: no such file or folder; give an image or a folder")
    try:
        path = resolve_checkpoint(ckpt)
    except FileNotFoundError as error:
        raise ConfigError(f"ckpt={ckpt}: {error}. Usage: {USAGE}") from None
    settings = {
        key: cfg.get(key, default)
        for key, default in (
            ("device", "auto"),
            ("tile", "auto"),
            ("overlap", 64),
            ("max_memory_mb", None),
            ("precision", "fp32"),
        )
    }
    try:
        stylizer = Stylizer.load(path, **settings)
    except ValueError as error:
        key = next((k for k in settings if str(error).startswith(f"{k}=")), None)
        raise ConfigError(str(error) if key else f"ckpt={path}: {error}") from None
    logger.info("model: %s", describe(stylizer.info))
    return stylize_paths(
        stylizer,
        source,
        output,
        overwrite=bool(cfg.get("overwrite", False)),
        ext=str(cfg.get("ext", "png")),
        suffix=str(cfg.get("suffix") or ""),
        recursive=bool(cfg.get("recursive", True)),
        max_pixels=int(cfg.get("max_pixels", 100_000_000)),
        progress=bool(cfg.get("progress", True)),
    )


def _required(cfg: DictConfig, key: str) -> str:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        what = {
            "ckpt": "the trained network (stylizer.pt from a train run folder, a .ckpt, or the "
            "run folder)",
            "input": "an image file or a folder of images",
            "output": "the folder to write the stylized images to",
        }[key]
        raise ConfigError(f"{key} is required: {what}. Usage: {USAGE}")
    return str(cfg[key])
