"""LightningModule that trains the stylization network F on synthetic pairs (docs/method.md §4).

One training step = one generator step (L1 + perceptual + GAN after its warm-up), then, once
the GAN is on, one discriminator step; both optimised manually. `trainer.global_step` counts
generator steps only, so `max_steps` means training batches. An EMA copy of F (`net_ema`) is
what samples, evaluation and export use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from portrait_toon.training.ema import ExponentialMovingAverage
from portrait_toon.training.losses import LossConfig, StylizerLoss
from portrait_toon.utils.generator_file import net_config, net_target, save_stylizer

log = logging.getLogger(__name__)

DEFAULT_OPTIM: dict[str, Any] = {
    "lr": 2.0e-4,
    "d_lr": None,  # None: same as lr
    "betas": (0.5, 0.999),
    "weight_decay": 0.0,
    "grad_clip": 1.0,  # max global grad norm per network; None or 0 disables
    "scheduler": "none",  # "none" | "cosine"
    "warmup_steps": 0,  # linear LR warm-up (cosine only)
    "min_lr_ratio": 0.0,  # cosine floor as a fraction of lr
    "total_steps": None,  # cosine length; None: trainer.max_steps
}


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (checkpoints stay loadable with weights_only)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # omegaconf ships with hydra; guard odd installs only
        pass
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _build(component: nn.Module | Mapping[str, Any] | None, what: str) -> nn.Module | None:
    """Accept an instantiated module or a Hydra node with `_target_` (non-recursive configs)."""
    if component is None or isinstance(component, nn.Module):
        return component
    if isinstance(component, Mapping) or hasattr(component, "_target_"):
        from hydra.utils import instantiate

        return instantiate(component)
    raise TypeError(f"StylizerModule {what}: expected an nn.Module or a config with _target_")


class CosineSchedule:
    """LR factor: linear warm-up, then cosine from 1 to `min_ratio` at `total_steps`.

    A callable object (not a lambda) so LambdaLR can save it; `offset` shifts its clock for an
    optimiser that starts stepping late (the discriminator after the GAN warm-up).
    """

    def __init__(
        self, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0, offset: int = 0
    ) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(warmup_steps)
        self.min_ratio = float(min_ratio)
        self.offset = int(offset)

    def __call__(self, count: int) -> float:
        step = count + self.offset
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StylizerModule(pl.LightningModule):
    """Trains F (`net`) against D (`discriminator`) on batches with `src` and `tgt`.

    Args:
        net: F, an nn.Module (or a `_target_` config); default a `UNet()`.
        discriminator: D returning a list of logit maps (e.g. MultiScalePatchGAN), or None for
            no GAN. If D's `in_channels` is twice the image channels it is conditional and sees
            `cat(src, image)`.
        loss: the `loss` config (see `LossConfig`): l1, perceptual {kind, weight, max_size,
            every_n_steps, weights_path}, adv {kind, weight, warmup_steps}.
        optim: overrides of DEFAULT_OPTIM (lr, d_lr, betas, weight_decay, grad_clip,
            scheduler, warmup_steps, min_lr_ratio, total_steps).
        ema_decay, ema_warmup: EMA of F (see training/ema.py).
        channels_last: keep F, D and the batches in channels_last (NHWC) memory, the layout
            the CPU convolutions run fastest on (measured: the U-Net's 128 px training
            step ~1.2x faster) and tensor cores prefer. Files and checkpoints load either way.
        perceptual: an already built perceptual module (tests; otherwise built from `loss`).

    Batches: a dict with `src` and `tgt` float [B,3,H,W] in [-1,1] (other keys are ignored).
    """

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any] | None = None,
        discriminator: nn.Module | Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        perceptual: nn.Module | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if net is None:
            from portrait_toon.nets.unet import UNet

            net = UNet()
        self.net = _build(net, "net")
        self.discriminator = _build(discriminator, "discriminator")
        loss_config = LossConfig.from_mapping(_plain(loss))
        self.loss_fn = StylizerLoss(loss_config, perceptual=perceptual)
        unknown = set(_plain(optim) or {}) - set(DEFAULT_OPTIM)
        if unknown:
            raise ValueError(
                f"optim config: unknown keys {sorted(unknown)} (expected {sorted(DEFAULT_OPTIM)})"
            )
        self.optim_config = {**DEFAULT_OPTIM, **(_plain(optim) or {})}
        if self.optim_config["scheduler"] not in ("none", "cosine"):
            raise ValueError(
                f"optim.scheduler={self.optim_config['scheduler']!r} is not 'none' or 'cosine'"
            )
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # before the EMA copy, so that it shares the layout
            for network in (self.net, self.discriminator):
                if network is not None:
                    network.to(memory_format=torch.channels_last)
        self.net_ema = ExponentialMovingAverage(self.net, decay=ema_decay, warmup=ema_warmup)
        self.net_target, self.net_config = net_target(self.net), net_config(self.net)
        if loss_config.uses_adversarial and self.discriminator is None:
            raise ValueError(
                "loss.adv is on but no discriminator was given (set loss.adv.weight=0)"
            )
        self.use_gan = loss_config.uses_adversarial
        self.save_hyperparameters(
            {
                "net_target": self.net_target,
                "net_config": self.net_config,
                "discriminator_config": _plain(getattr(self.discriminator, "config", None)),
                "loss": _plain(loss) or {},
                "optim": self.optim_config,
                "ema_decay": ema_decay,
                "ema_warmup": ema_warmup,
                "channels_last": self.channels_last,
            }
        )

    # ----------------------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        cfg = self.optim_config
        betas = tuple(cfg["betas"])
        optimizers = [
            torch.optim.Adam(
                self.net.parameters(), lr=cfg["lr"], betas=betas, weight_decay=cfg["weight_decay"]
            )
        ]
        if self.use_gan:
            d_lr = cfg["d_lr"] if cfg["d_lr"] is not None else cfg["lr"]
            optimizers.append(
                torch.optim.Adam(
                    self.discriminator.parameters(),
                    lr=d_lr,
                    betas=betas,
                    weight_decay=cfg["weight_decay"],
                )
            )
        if cfg["scheduler"] == "none":
            return optimizers
        total = cfg["total_steps"] or (self.trainer.max_steps if self._trainer else -1)
        if not total or total <= 0:
            raise ValueError("optim.scheduler=cosine needs optim.total_steps or trainer.max_steps")
        offsets = [0, self.loss_fn.config.adv.warmup_steps]
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                CosineSchedule(total, cfg["warmup_steps"], cfg["min_lr_ratio"], offset),
            )
            for optimizer, offset in zip(optimizers, offsets)
        ]
        return optimizers, schedulers

    def _optimizers(self) -> tuple[Any, Any | None]:
        optimizers = self.optimizers()
        if not isinstance(optimizers, list | tuple):
            return optimizers, None
        return optimizers[0], (optimizers[1] if len(optimizers) > 1 else None)

    def _schedulers(self) -> tuple[Any | None, Any | None]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return None, None
        if not isinstance(schedulers, list | tuple):
            return schedulers, None
        return schedulers[0], (schedulers[1] if len(schedulers) > 1 else None)

    def _clip(self, optimizer: Any) -> None:
        max_norm = self.optim_config["grad_clip"]
        if max_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=float(max_norm), gradient_clip_algorithm="norm"
            )

    # -------------------------------------------------------------------------------- training
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _discriminate(self, src: torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
        if getattr(self.discriminator, "in_channels", images.shape[1]) == 2 * images.shape[1]:
            images = torch.cat([src, images], dim=1)
        logits = self.discriminator(images)
        return [logits] if isinstance(logits, torch.Tensor) else list(logits)

    def _images(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        src, tgt = batch["src"], batch["tgt"]
        if self.channels_last:
            src = src.contiguous(memory_format=torch.channels_last)
            tgt = tgt.contiguous(memory_format=torch.channels_last)
        return src, tgt

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        src, tgt = self._images(batch)
        step = self.global_step  # generator steps completed before this one
        opt_g, opt_d = self._optimizers()
        sched_g, sched_d = self._schedulers()
        gan_on = self.use_gan and self.loss_fn.adversarial_active(step)

        # Generator step. D's weights are frozen here so G's backward skips their gradients.
        output = self.net(src)
        fake_logits = None
        if gan_on:
            self.discriminator.requires_grad_(False)
            fake_logits = self._discriminate(src, output)
        g_total, terms = self.loss_fn.generator_losses(output, tgt, step, fake_logits)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_total)
        self._clip(opt_g)
        opt_g.step()
        if sched_g is not None:
            sched_g.step()
        self.net_ema.update(self.net)

        # Discriminator step on the same (detached) output.
        if gan_on:
            self.discriminator.requires_grad_(True)
            real_logits = self._discriminate(src, tgt)
            fake_logits = self._discriminate(src, output.detach())
            terms["d_loss"] = self.loss_fn.discriminator_loss(real_logits, fake_logits)
            terms["d_real"] = torch.stack([r.mean() for r in real_logits]).mean()
            terms["d_fake"] = torch.stack([f.mean() for f in fake_logits]).mean()
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(terms["d_loss"])
            self._clip(opt_d)
            # Lightning counts every optimiser step in global_step; count only G's so that
            # max_steps, warm-ups and schedules mean training batches.
            opt_d._on_before_step = _no_op
            opt_d._on_after_step = _no_op
            opt_d.step()
            if sched_d is not None:
                sched_d.step()

        metrics = {f"train/{name}": value.detach() for name, value in terms.items()}
        metrics["train/lr"] = torch.tensor(opt_g.param_groups[0]["lr"])
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=src.shape[0])
        self.log("train/l1_step", terms["l1"].detach(), prog_bar=True, logger=False)
        return g_total.detach()

    # ------------------------------------------------------------------------------ validation
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        src, tgt = self._images(batch)
        output = self.net_ema(src)
        size = src.shape[0]
        self.log("val/l1", (output - tgt).abs().mean(), on_epoch=True, batch_size=size)
        self.log("val/l1_input", (src - tgt).abs().mean(), on_epoch=True, batch_size=size)

    def on_train_end(self) -> None:
        """Give every DDP rank rank 0's buffers (batch-norm statistics of F and F_ema).

        DDP broadcasts buffers before each forward, but each rank's last steps update its own
        copy; without SyncBatchNorm (CPU/gloo has none) the ranks would end with different
        running statistics. Rank 0's are the ones checkpointed and exported."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() < 2:
            return
        for module in (self.net, self.net_ema):
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What load_stylizer needs to rebuild F_ema from a .ckpt without Hydra.
        checkpoint["stylizer"] = {
            "format_version": 1,
            "net_target": self.net_target,
            "net_config": self.net_config,
        }

    def export_generator(self, path: str | Path) -> Path:
        """Save F_ema (weights + constructor config) as a small standalone file.

        Rebuild it with `portrait_toon.utils.generator_file.load_stylizer(path)`.
        """
        meta = {"global_step": int(self.global_step) if self._trainer else 0, "ema": True}
        path = save_stylizer(path, self.net_ema.module, self.net_config, meta=meta)
        log.info("exported F_ema (%s) to %s", self.net_target, path)
        return path


def _no_op() -> None:
    return None
