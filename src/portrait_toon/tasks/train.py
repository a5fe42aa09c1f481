"""`python train.py`: build synthesizer, data, model, loggers and trainer from the config, fit F,
then evaluate on held-out pairs and export F_ema (metrics.json, demo_report.png, stylizer.pt).
"""

from __future__ import annotations

import inspect
import logging
import netrc
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from portrait_toon import config, resume
from portrait_toon.tasks.synthesize import build_synthesizer

log = logging.getLogger(__name__)
info = rank_zero_only(log.info)

WANDB_RUN_ID_FILE = "wandb_run_id.txt"


# --------------------------------------------------------------------------------------------
# W&B
def wandb_offline_reason() -> str | None:
    """Why W&B must run offline here (no API key anywhere), or None when it may go online.

    An explicit WANDB_MODE (online, offline, disabled) is the user's choice and is kept.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc_path.is_file():
        try:
            if netrc.netrc(str(netrc_path)).authenticators("api.wandb.ai"):
                return None
        except (netrc.NetrcParseError, OSError):
            pass
    return "no W&B API key (WANDB_API_KEY unset, no api.wandb.ai entry in ~/.netrc)"


def finish_wandb(exit_code: int = 0) -> None:
    """End this job's W&B run, if any, so the next job of a sweep starts its own run."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _is_wandb(node: DictConfig) -> bool:
    return str(node.get("_target_", "")).endswith("WandbLogger")


def _saved_wandb_id(ckpt_path: str | None) -> str | None:
    """The W&B run id of the run folder a resumed checkpoint comes from (same run continues)."""
    if ckpt_path is None:
        return None
    for folder in (Path(ckpt_path).parent.parent, Path(ckpt_path).parent):
        id_file = folder / WANDB_RUN_ID_FILE
        if id_file.is_file():
            return id_file.read_text(encoding="utf-8").strip() or None
    return None


def build_loggers(cfg: DictConfig, ckpt_path: str | None) -> list[Any]:
    """Instantiate every entry of `cfg.logger` (W&B: offline without a key, resumable id)."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        extra: dict[str, Any] = {}
        if _is_wandb(node):
            reason = wandb_offline_reason()
            if reason:
                os.environ["WANDB_MODE"] = "offline"
                info(
                    "W&B runs offline: %s. Upload later: `wandb sync %s/wandb/offline-run-*`",
                    reason,
                    cfg.paths.output_dir,
                )
                extra["offline"] = True
            if node.get("id") is None:
                run_id = _saved_wandb_id(ckpt_path)
                if run_id:
                    extra.update(id=run_id, resume="allow")
                    info("resuming W&B run %s", run_id)
            if not node.get("group"):
                group = _sweep_group()
                if group:
                    extra["group"] = group
            Path(node.save_dir).mkdir(parents=True, exist_ok=True)
        log.debug("logger %s: %s", name, node._target_)
        loggers.append(instantiate(node, **extra))
    return loggers


def _sweep_group() -> str | None:
    """Jobs of one Hydra multirun share a W&B group (the sweep folder's name).

    A job belongs to a sweep when Hydra runs it in multirun mode (in-process launchers,
    submitit) or when its folder lies inside `hydra.sweep.dir`: hydra/launcher=process starts
    each job as a plain single run with its sweep folder passed along.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(str(hydra_cfg.sweep.dir)).resolve()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return sweep_dir.name
    output_dir = hydra_cfg.runtime.output_dir
    if output_dir and sweep_dir in Path(str(output_dir)).resolve().parents:
        return sweep_dir.name
    return None


@rank_zero_only
def _record_wandb_run(loggers: list[Any], cfg: DictConfig, output_dir: Path) -> None:
    """Log the resolved config to every logger; remember the W&B run id for resumes."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
        if type(logger).__name__ == "WandbLogger":
            (output_dir / WANDB_RUN_ID_FILE).write_text(str(logger.experiment.id), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# parts
def build_callbacks(cfg: DictConfig, have_logger: bool) -> list[pl.Callback]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if not have_logger and str(node._target_).endswith("LearningRateMonitor"):
            log.debug("callback %s skipped: it needs a logger", name)
            continue
        callbacks.append(instantiate(node))
    return callbacks


def _accepts(target: str, argument: str) -> bool:
    parameters = inspect.signature(get_class(target)).parameters
    return argument in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def data_base_seed(cfg: DictConfig) -> int:
    """Seed of the training pairs (data.base_seed; evaluate.base_seed when data has none)."""
    return int(OmegaConf.select(cfg, "data.base_seed", default=cfg.evaluate.base_seed))


def build_datamodule(cfg: DictConfig) -> tuple[pl.LightningDataModule, torch.nn.Module | None]:
    """The configured data module, given a PairSynthesizer from the config when it takes one.

    A data module class may say `needs_synthesizer = False` (e.g. the few-shot face folder).
    """
    data_class = get_class(cfg.data._target_)
    if getattr(data_class, "needs_synthesizer", _accepts(cfg.data._target_, "synthesizer")):
        synthesizer = build_synthesizer(cfg, base_seed=data_base_seed(cfg))
        return instantiate(cfg.data, synthesizer=synthesizer), synthesizer
    return instantiate(cfg.data), None


def build_model(cfg: DictConfig) -> pl.LightningModule:
    """The LightningModule of `cfg.model`; the `loss` group goes to models that take `loss`."""
    if "loss" in cfg and _accepts(cfg.model._target_, "loss"):
        return instantiate(cfg.model, loss=cfg.loss)
    return instantiate(cfg.model)


def prepare(cfg: DictConfig) -> DictConfig:
    """Apply the debug shrink and check the config (entry points call this first)."""
    config.apply_set_if_present(cfg)
    config.validate(cfg)
    return cfg


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint `cfg.ckpt_path` names (see `resume.resolve_ckpt_path`), or None.

    A job of a sweep given `ckpt_path=last` resumes from its own folder only (the same sweep
    rerun with its `hydra.sweep.dir`, or a SLURM requeue) and otherwise starts fresh: the
    newest run elsewhere belongs to another experiment.
    """
    if str(cfg.ckpt_path) == "last" and _sweep_group() is not None:
        own = output_dir / "checkpoints" / "last.ckpt"
        if not own.is_file():
            info("ckpt_path=last: no checkpoint in this sweep job's folder yet, starting fresh")
            return None
        return str(own)
    runs_dir = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs"
    return resume.resolve_ckpt_path(cfg.ckpt_path, output_dir, str(runs_dir))


class RecordOverrides(pl.Callback):
    """Writes the run's Hydra overrides into every checkpoint it saves (`resume.OVERRIDES_KEY`),
    so a resume that does not fit can name what the run was started with, wherever the file
    went (`resume.check_checkpoint_fits`)."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[resume.OVERRIDES_KEY] = resume.task_overrides()


# --------------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit F as configured; returns the held-out metrics (empty when evaluation is off)."""
    prepare(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    if ckpt_path:
        info("resuming from %s with overrides: %s", ckpt_path, " ".join(resume.task_overrides()))
    pl.seed_everything(int(cfg.seed), workers=True)

    exit_code = 1
    try:
        datamodule, _ = build_datamodule(cfg)
        model = build_model(cfg)
        if ckpt_path:
            resume.check_checkpoint_fits(model, ckpt_path)
        loggers = build_loggers(cfg, ckpt_path)
        callbacks = [*build_callbacks(cfg, have_logger=bool(loggers)), RecordOverrides()]
        extra: dict[str, Any] = {}
        if getattr(datamodule, "val_size", None) == 0:
            extra["limit_val_batches"] = 0  # no validation set: no empty validation loop
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers if loggers else False, **extra
        )
        _record_wandb_run(loggers, cfg, output_dir)
        info("output folder: %s", output_dir)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        save_final_checkpoint(trainer)

        metrics: dict[str, Any] = {}
        if trainer.is_global_zero and not trainer.interrupted:
            metrics = finish_training(cfg, model, trainer, output_dir)
        exit_code = 0
        return metrics
    finally:
        # always: a sweep's next job must not log into this job's W&B run
        finish_wandb(exit_code)


def save_final_checkpoint(trainer: pl.Trainer) -> Path | None:
    """Make `last.ckpt` the state at the end of training (all ranks call this: it syncs).

    ModelCheckpoint writes last.ckpt every N steps, and at the end only if it never wrote one,
    so a run whose max_steps is not a multiple of N would end with an older last.ckpt.
    """
    callback = trainer.checkpoint_callback
    if (
        callback is None
        or not callback.save_last
        or trainer.fast_dev_run
        or callback.dirpath is None
    ):
        return None
    path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    if getattr(callback, "_last_global_step_saved", None) == trainer.global_step and path.exists():
        return path
    trainer.save_checkpoint(path, weights_only=False)  # the full state (resumable)
    info("final checkpoint (step %d): %s", trainer.global_step, path)
    return path


def finish_training(
    cfg: DictConfig, model: pl.LightningModule, trainer: pl.Trainer, output_dir: Path
) -> dict[str, Any]:
    """Rank zero, after fit: held-out evaluation, metrics.json, demo_report.png, export."""
    from portrait_toon.tasks.evaluate import (
        REPORT_FILE,
        STYLIZER_FILE,
        evaluate_heldout,
        export_stylizer,
    )

    metrics: dict[str, Any] = {}
    if cfg.evaluate.enabled:  # models without a stylizer (e.g. StyleGAN2 fine-tuning) turn it off
        metrics = evaluate_heldout(cfg, model.net_ema, output_dir, steps=int(trainer.global_step))
        report = output_dir / REPORT_FILE
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"heldout/{k}": v for k, v in metrics.items() if isinstance(v, int | float)},
                step=int(trainer.global_step),
            )
            if hasattr(logger, "log_image") and report.is_file():  # W&B: the report in the run
                logger.log_image(
                    key="heldout/demo_report", images=[str(report)], step=int(trainer.global_step)
                )
    if cfg.evaluate.export:
        export_stylizer(model, output_dir / STYLIZER_FILE)
    return metrics
