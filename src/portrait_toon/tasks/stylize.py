"""The stylize task (what `stylize.py` runs): load F's EMA weights and stylize a file or folder,
with config mistakes turned into errors that name the key and the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from portrait_toon.config import ConfigError
from portrait_toon.inference.stylize import (
    StylizeReport,
    load_stylizer,
    resolve_device,
    stylize_paths,
)

logger = logging.getLogger(__name__)

USAGE = "python stylize.py ckpt=PATH/stylizer.pt input=FILE_OR_FOLDER output=DIR"
REPORT_NAME = "stylize_report.json"
# What a run folder given as `ckpt` may hold, most preferred first.
RUN_FOLDER_CANDIDATES = ("stylizer.pt", "stylizer.safetensors", "checkpoints/last.ckpt")


def stylize(cfg: DictConfig) -> StylizeReport:
    """Stylize `cfg.input` into `cfg.output` with the network in `cfg.ckpt`."""
    ckpt = resolve_checkpoint(_required(cfg, "ckpt"))
    source = Path(_required(cfg, "input")).expanduser()
    output = Path(_required(cfg, "output")).expanduser()
    if not source.exists():
        raise ConfigError(f"input={source}: no such file or folder; give an image or a folder")
    tile = cfg.get("tile")
    if tile is not None and (not isinstance(tile, int) or tile < 1):
        raise ConfigError(f"tile={tile}: give a side in pixels (e.g. tile=1024) or tile=null")
    try:
        device = resolve_device(cfg.get("device", "auto"))
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"device={cfg.get('device')}: {error}") from None

    net = load_stylizer(ckpt, device)
    report = stylize_paths(
        net,
        source,
        output,
        overwrite=bool(cfg.get("overwrite", False)),
        ext=str(cfg.get("ext", "png")),
        suffix=str(cfg.get("suffix") or ""),
        recursive=bool(cfg.get("recursive", True)),
        tile=tile,
        overlap=int(cfg.get("overlap", 64)),
        device=device,
        precision=str(cfg.get("precision", "fp32")),
        max_pixels=int(cfg.get("max_pixels", 100_000_000)),
        progress=bool(cfg.get("progress", True)),
    )
    _save_report(cfg, report, ckpt)
    return report


def resolve_checkpoint(value: str) -> Path:
    """A stylizer/checkpoint file, or a train run folder holding one."""
    path = Path(value).expanduser()
    if path.is_dir():
        for candidate in RUN_FOLDER_CANDIDATES:
            if (path / candidate).is_file():
                return path / candidate
        raise ConfigError(
            f"ckpt={value}: the folder holds none of {list(RUN_FOLDER_CANDIDATES)}; give the "
            "stylizer.pt that training exports (evaluate.export=true) or a .ckpt file"
        )
    if not path.is_file():
        raise ConfigError(
            f"ckpt={value}: no such file; give the stylizer.pt in a train run folder "
            f"(logs/train/runs/<run>/stylizer.pt) or a .ckpt. Usage: {USAGE}"
        )
    return path


def _required(cfg: DictConfig, key: str) -> str:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        what = {
            "ckpt": "the trained network (stylizer.pt from a train run folder, or a .ckpt)",
            "input": "an image file or a folder of images",
            "output": "the folder to write the stylized images to",
        }[key]
        raise ConfigError(f"{key} is required: {what}. Usage: {USAGE}")
    return str(cfg[key])


def _save_report(cfg: DictConfig, report: StylizeReport, ckpt: Path) -> None:
    """stylize_report.json in the job's run folder (not among the user's outputs)."""
    try:
        run_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    except Exception:  # noqa: BLE001 - no Hydra runtime (plain function call): no run folder
        run_dir = None
    if not run_dir:
        return
    path = Path(run_dir) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ckpt": str(ckpt), **report.to_dict()}, indent=2))
    logger.info("report written to %s", path)
