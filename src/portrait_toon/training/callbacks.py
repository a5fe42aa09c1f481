"""Sample grids during training: rows of (source | target | F(source) | F_ema(source)).

The same few pairs every time (the first ones seen, kept in the callback's checkpoint state), so
successive grids show progress rather than new data. Written as PNG into the run folder
(atomic) and sent to the logger (W&B image, TensorBoard image, nothing for CSV). Rank zero only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from portrait_toon.utils.files import atomic_write_png
from portrait_toon.utils.grid import label_image, make_grid, tensor_to_uint8

log = logging.getLogger(__name__)

COLUMNS = ("source", "target", "F(x)", "F_ema(x)")


def sample_grid(
    src: torch.Tensor, tgt: torch.Tensor, output: torch.Tensor, output_ema: torch.Tensor
) -> np.ndarray:
    """uint8 RGB grid: one row per image, columns COLUMNS, with a header of column names."""
    rows = [
        image for quad in zip(src, tgt, output, output_ema, strict=True) for image in quad
    ]  # row-major: all four columns of image 0, then image 1, ...
    padding = 2
    grid = tensor_to_uint8(make_grid(torch.stack(rows).float().cpu(), nrow=4, padding=padding))
    cell = src.shape[-1] + padding
    strips = [label_image(np.full((0, cell, 3), 255, dtype=np.uint8), name) for name in COLUMNS]
    header = np.concatenate(strips, axis=1)
    # Pad the header to the grid's width (the grid has one extra padding column at the right).
    extra = grid.shape[1] - header.shape[1]
    if extra > 0:
        header = np.concatenate([header, np.repeat(header[:, -1:], extra, axis=1)], axis=1)
    return np.concatenate([header[:, : grid.shape[1]], grid], axis=0)


class SampleGridCallback(pl.Callback):
    """Every `every_n_steps` generator steps (and at the end of training) render a grid.

    Args:
        every_n_steps: interval in training steps (`trainer.global_step`).
        num_images: rows of the grid (taken from the first batch seen).
        dirname: folder for the PNGs, relative to `trainer.default_root_dir` unless absolute.
        log_key: image name in the logger.
    """

    def __init__(
        self,
        every_n_steps: int = 250,
        num_images: int = 4,
        dirname: str = "samples",
        log_key: str = "samples",
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or num_images < 1:
            raise ValueError("SampleGridCallback: every_n_steps and num_images must be >= 1")
        self.every_n_steps = int(every_n_steps)
        self.num_images = int(num_images)
        self.dirname = dirname
        self.log_key = log_key
        self.fixed_src: torch.Tensor | None = None
        self.fixed_tgt: torch.Tensor | None = None
        self.last_written_step = -1
        self.written: list[Path] = []

    # The fixed pairs travel with checkpoints so a resumed run keeps drawing the same rows.
    def state_dict(self) -> dict[str, Any]:
        if self.fixed_src is None:
            return {}
        return {"fixed_src": self.fixed_src, "fixed_tgt": self.fixed_tgt}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "fixed_src" in state_dict:
            self.fixed_src = state_dict["fixed_src"]
            self.fixed_tgt = state_dict["fixed_tgt"]

    def _remember(self, batch: Mapping[str, torch.Tensor]) -> None:
        if self.fixed_src is None and "src" in batch and "tgt" in batch:
            self.fixed_src = batch["src"][: self.num_images].detach().float().cpu().clone()
            self.fixed_tgt = batch["tgt"][: self.num_images].detach().float().cpu().clone()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        self._remember(batch)
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and trainer.global_step != self.last_written_step:
            self.write(trainer, pl_module)

    def output_dir(self, trainer: pl.Trainer) -> Path:
        path = Path(self.dirname)
        return path if path.is_absolute() else Path(trainer.default_root_dir) / path

    @torch.no_grad()
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Render the grid for the current step, save it and log it; returns the PNG path."""
        if self.fixed_src is None:
            return None
        device = pl_module.device
        src = self.fixed_src.to(device)
        net, net_ema = pl_module.net, pl_module.net_ema
        was_training = net.training
        net.eval()
        try:
            output = net(src).float()
            output_ema = net_ema(src).float()
        finally:
            net.train(was_training)
        image = sample_grid(self.fixed_src, self.fixed_tgt, output.cpu(), output_ema.cpu())
        step = trainer.global_step
        path = atomic_write_png(self.output_dir(trainer) / f"step_{step:07d}.png", image)
        self.written.append(path)
        self.last_written_step = step
        self._log_image(trainer, image, step)
        return path

    def _log_image(self, trainer: pl.Trainer, image: np.ndarray, step: int) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            try:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=self.log_key, images=[image], step=step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(self.log_key, image, step, dataformats="HWC")
            except Exception as error:  # a logger hiccup must not kill a long training run
                log.warning("could not log the sample grid to %s: %s", type(logger).__name__, error)
