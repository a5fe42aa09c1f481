"""Few-shot fine-tuning of a StyleGAN2 (FFHQ -> a handful of cartoon faces) to get G_t.

One LightningModule, manual optimisation, following StyleGAN2 / StyleGAN2-ADA / FreezeD:
- non-saturating logistic loss, lazy R1 on the discriminator (every `r1_every` D steps);
- DiffAugment (colour, translation, cutout) on real AND fake images before D, with a fixed
  probability p or ADA's adaptive p (target r_t = E[sign(D(real))]);
- FreezeD (the first k discriminator blocks frozen), optional frozen mapping network and frozen
  low-resolution generator layers;
- EMA generator g_ema; Adam(lr 0.002, betas (0, 0.99)) with the lazy-regularisation correction
  on D (c = r1_every / (r1_every + 1): lr * c, betas ** c).

`trainer.max_steps` counts GENERATOR steps: the discriminator (and R1) steps are taken through
the strategy without Lightning's step counter, so global_step = G steps = training iterations.
At the end a rosinality-format checkpoint `{"g_ema", "latent_avg", "g", "d"}` is written
atomically (plus a YAML file beside it with the architecture and the run's config).
"""

from __future__ import annotations

import copy
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

from portrait_toon.checkpoints import load_into, load_stylegan2_checkpoint, resolve_weight
from portrait_toon.data.images import write_image
from portrait_toon.nets.stylegan2 import Discriminator, Generator
from portrait_toon.training.diffaugment import AdaptiveAugmentProbability, DiffAugment
from portrait_toon.utils.files import atomic_write_bytes
from portrait_toon.utils.grid import make_grid, tensor_to_uint8

log = logging.getLogger(__name__)

DEFAULT_AUGMENT: dict[str, Any] = {
    # DiffAugment ops; "" switches augmentation off
    "policy": "color,translation,cutout",
    # per-sample, per-op probability when not adaptive (1.0 = reference DiffAugment)
    "p": 1.0,
    # ADA-style controller: p starts at `p` and follows the overfitting heuristic r_t
    "adaptive": False,
    "target": 0.6,
    "speed_kimg": 100.0,
    "interval": 4,
    "translation_ratio": 0.125,
    "cutout_ratio": 0.5,
}


def _plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes) -> plain Python containers."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def set_requires_grad(parameters: Sequence[nn.Parameter], flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)


def generator_layer_resolutions(generator: nn.Module) -> dict[str, int]:
    """Resolution of each synthesis sub-module of a rosinality Generator, by attribute prefix.

    conv1 / to_rgb1 / input work at 4 px; convs[2k] and convs[2k+1] and to_rgbs[k] at
    2 ** (k + 3) px (convs[2k] is the up-sampling conv into that resolution).
    """
    resolutions = {"input.": 4, "conv1.": 4, "to_rgb1.": 4}
    for index in range(len(generator.convs)):
        resolutions[f"convs.{index}."] = 2 ** (index // 2 + 3)
    for index in range(len(generator.to_rgbs)):
        resolutions[f"to_rgbs.{index}."] = 2 ** (index + 3)
    return resolutions


def frozen_generator_parameters(
    generator: nn.Module, freeze_mapping: bool, freeze_max_resolution: int
) -> set[str]:
    """Names of generator parameters kept fixed: the mapping net (`style.*`) if asked, and every
    synthesis layer working at a resolution <= `freeze_max_resolution` (0 = none)."""
    frozen: set[str] = set()
    resolutions = generator_layer_resolutions(generator)
    for name, _ in generator.named_parameters():
        if freeze_mapping and name.startswith("style."):
            frozen.add(name)
            continue
        for prefix, resolution in resolutions.items():
            if name.startswith(prefix) and resolution <= freeze_max_resolution:
                frozen.add(name)
                break
    return frozen


def frozen_discriminator_parameters(discriminator: nn.Module, blocks: int) -> set[str]:
    """FreezeD: names of the parameters of the first `blocks` entries of `discriminator.convs`
    (convs.0 is the fromRGB layer, then the ResBlocks from high to low resolution)."""
    available = len(discriminator.convs)
    if not 0 <= blocks <= available:
        raise ValueError(
            f"model.freeze_d_blocks={blocks}: the discriminator has {available} blocks "
            f"(convs.0 .. convs.{available - 1}); choose 0..{available}"
        )
    prefixes = tuple(f"convs.{i}." for i in range(blocks))
    return {name for name, _ in discriminator.named_parameters() if name.startswith(prefixes)}


def ema_decay_for(batch_images: int, half_life_kimg: float) -> float:
    """StyleGAN2's EMA: the average forgets half its weight every `half_life_kimg` k images."""
    if half_life_kimg <= 0:
        return 0.0
    return 0.5 ** (batch_images / (half_life_kimg * 1000.0))


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Non-saturating logistic D loss: softplus(D(fake)) + softplus(-D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating G loss: softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1 = E ||d D(x) / d x||^2 over real images (Mescheder et al. 2018)."""
    (gradient,) = torch.autograd.grad(
        outputs=real_logits.sum(), inputs=real_images, create_graph=True
    )
    return gradient.pow(2).reshape(gradient.shape[0], -1).sum(1).mean()


def make_pair_grid(source: Tensor, adapted: Tensor, columns: int = 8) -> np.ndarray:
    """uint8 HWC grid: for every row of `columns` latents, the source generator's images above
    the adapted generator's images on the same latents; inputs in [-1, 1] NCHW."""
    count = source.shape[0]
    columns = max(1, min(columns, count))
    blank = source.new_full((1, *source.shape[1:]), -1.0)
    tiles = []
    for start in range(0, count, columns):
        for half in (source, adapted):
            chunk = half[start : start + columns]
            missing = columns - chunk.shape[0]  # last row: pad so the pairs stay aligned
            tiles.append(
                torch.cat([chunk, blank.expand(missing, -1, -1, -1)]) if missing else chunk
            )
    grid = make_grid(torch.cat(tiles).float().cpu(), nrow=columns, padding=0)
    return tensor_to_uint8(grid)


class StyleGANFinetuneModule(pl.LightningModule):
    """Fine-tune a rosinality StyleGAN2 (G, D, g_ema) on a few images; see the module docstring.

    Args:
        generator: keyword arguments of `nets.stylegan2.Generator` (size, style_dim, n_mlp,
            channel_multiplier, channel_max, ...).
        discriminator: keyword arguments of `nets.stylegan2.Discriminator`; `size` and
            `channel_multiplier` default to the generator's.
        init_ckpt: the start checkpoint: a file name inside `weights_dir` or a path (rosinality
            converted `{g_ema, latent_avg[, g, d]}` or train format). None = random init, only
            with `allow_random_init` (smoke tests; it is not few-shot adaptation any more).
        weights_dir: where `init_ckpt` is looked up when it is a bare file name.
        allow_random_init: accept `init_ckpt=None` (logged as a warning).
        lr, betas: Adam settings of StyleGAN2; D's are corrected for lazy R1.
        r1_gamma, r1_every: R1 weight gamma (penalty gamma/2 * R1) and its lazy interval.
        mixing_prob: probability of style mixing for a batch (StyleGAN2: 0.9).
        ema_kimg: EMA half-life in thousands of images; None = StyleGAN2-ADA's rule
            batch * 10 / 32 (a half-life of ~312 steps at any batch size). `ema_decay`
            overrides both with a fixed per-step decay.
        freeze_d_blocks: FreezeD, number of leading discriminator blocks kept fixed.
        freeze_mapping: keep the mapping network fixed (W space stays FFHQ's).
        freeze_g_max_resolution: keep generator layers at or below this resolution fixed
            (0 = none; e.g. 16 keeps the coarse geometry of FFHQ faces).
        augment: DiffAugment / ADA settings (keys of DEFAULT_AUGMENT).
        sample_every: write a fixed-z grid (source vs adapted) every N G steps (0 = only at the
            start and end); `num_samples`, `sample_seed`, `sample_truncation` choose the latents
            (truncation towards each generator's own mean W), `sample_tile` caps the side of
            one image in the grid.
        latent_avg_samples: number of z averaged through g_ema's mapping for `latent_avg`.
        export_path: where the final rosinality checkpoint goes (None = run folder/G_t.pt).
    """

    def __init__(
        self,
        generator: Mapping[str, Any],
        discriminator: Mapping[str, Any] | None = None,
        init_ckpt: str | None = "stylegan2-ffhq-config-f.pt",
        weights_dir: str | None = None,
        allow_random_init: bool = False,
        lr: float = 0.002,
        betas: Sequence[float] = (0.0, 0.99),
        r1_gamma: float = 10.0,
        r1_every: int = 16,
        mixing_prob: float = 0.9,
        ema_kimg: float | None = None,
        ema_decay: float | None = None,
        freeze_d_blocks: int = 0,
        freeze_mapping: bool = False,
        freeze_g_max_resolution: int = 0,
        augment: Mapping[str, Any] | None = None,
        sample_every: int = 500,
        num_samples: int = 16,
        sample_seed: int = 0,
        sample_truncation: float = 1.0,
        sample_tile: int = 256,
        latent_avg_samples: int = 4096,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False

        generator_kwargs = dict(_plain(generator))
        discriminator_kwargs = dict(_plain(discriminator) or {})
        discriminator_kwargs.setdefault("size", generator_kwargs.get("size"))
        if "channel_multiplier" in generator_kwargs:
            discriminator_kwargs.setdefault(
                "channel_multiplier", generator_kwargs["channel_multiplier"]
            )
        if "channel_max" in generator_kwargs:
            discriminator_kwargs.setdefault("channel_max", generator_kwargs["channel_max"])
        self.generator_kwargs = generator_kwargs
        self.discriminator_kwargs = discriminator_kwargs
        augment_cfg = {**DEFAULT_AUGMENT, **dict(_plain(augment) or {})}
        unknown = sorted(set(augment_cfg) - set(DEFAULT_AUGMENT))
        if unknown:
            raise ValueError(
                f"model.augment: unknown key(s) {unknown}; known: {sorted(DEFAULT_AUGMENT)}"
            )
        if r1_every < 1:
            raise ValueError(f"model.r1_every must be >= 1, got {r1_every}")
        if not 0.0 <= mixing_prob <= 1.0:
            raise ValueError(f"model.mixing_prob must be in [0, 1], got {mixing_prob}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1) or null, got {ema_decay}")
        self.augment_cfg = augment_cfg

        self.g = Generator(**generator_kwargs)
        self.d = Discriminator(**discriminator_kwargs)
        self._load_start_point(init_ckpt, weights_dir, allow_random_init)
        self.g_ema = copy.deepcopy(self.g) if self._g_ema_state is None else self._fresh_g_ema()
        # the unmodified start generator: the "source" half of the monitoring grids
        self.g_source = copy.deepcopy(self.g_ema)
        # never trained directly (no mode-dependent layers, so train/eval mode is irrelevant)
        for net in (self.g_ema, self.g_source):
            net.requires_grad_(False)

        size = int(generator_kwargs["size"])
        if freeze_g_max_resolution and not (
            4 <= freeze_g_max_resolution <= size
            and freeze_g_max_resolution & (freeze_g_max_resolution - 1) == 0
        ):
            raise ValueError(
                f"model.freeze_g_max_resolution={freeze_g_max_resolution}: use 0 (none) or a "
                f"power of two between 4 and the generator size {size}"
            )
        self.frozen_g = frozen_generator_parameters(self.g, freeze_mapping, freeze_g_max_resolution)
        self.frozen_d = frozen_discriminator_parameters(self.d, freeze_d_blocks)
        self._g_trainable = [p for n, p in self.g.named_parameters() if n not in self.frozen_g]
        self._d_trainable = [p for n, p in self.d.named_parameters() if n not in self.frozen_d]
        # frozen weights never get a gradient (inputs' gradients still flow through them)
        for name, parameter in self.g.named_parameters():
            parameter.requires_grad_(name not in self.frozen_g)
        for name, parameter in self.d.named_parameters():
            parameter.requires_grad_(name not in self.frozen_d)
        if not self._g_trainable:
            raise ValueError("every generator parameter is frozen; nothing would be trained")
        self._ema_pairs = [
            (ema_p, p)
            for (name, ema_p), p in zip(
                self.g_ema.named_parameters(), self.g.parameters(), strict=True
            )
            if name not in self.frozen_g
        ]

        # completed G steps, saved with the weights (a Lightning checkpoint restores it too)
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.int64))
        self.augment = DiffAugment(
            augment_cfg["policy"],
            translation_ratio=augment_cfg["translation_ratio"],
            cutout_ratio=augment_cfg["cutout_ratio"],
        )
        self.ada = AdaptiveAugmentProbability(
            target=augment_cfg["target"],
            speed_kimg=augment_cfg["speed_kimg"],
            interval=augment_cfg["interval"],
            initial_p=augment_cfg["p"],
        )
        log.info(
            "fine-tuning StyleGAN2 %s px: %d/%d G and %d/%d D parameter tensors trainable",
            size,
            len(self._g_trainable),
            len(list(self.g.parameters())),
            len(self._d_trainable),
            len(list(self.d.parameters())),
        )

    # -----------------------------------------------------------------------------------------
    # start point
    def _load_start_point(
        self, init_ckpt: str | None, weights_dir: str | None, allow_random_init: bool
    ) -> None:
        self._g_ema_state: dict[str, Tensor] | None = None
        if init_ckpt is None:
            if not allow_random_init:
                raise ValueError(
                    "model.init_ckpt is null: few-shot fine-tuning starts from a pretrained "
                    "StyleGAN2 (e.g. stylegan2-ffhq-config-f.pt in paths.weights_dir). Set "
                    "model.allow_random_init=true only for smoke tests (debug=tiny does)."
                )
            log.warning(
                "StyleGAN2 fine-tuning from a RANDOM initialisation (init_ckpt=null): fine for "
                "smoke tests, but few images cannot train a GAN from scratch"
            )
            return
        path = Path(init_ckpt).expanduser()
        if not path.is_file():
            if weights_dir is None or path.is_absolute():
                raise FileNotFoundError(
                    f"model.init_ckpt: no file '{path}'; give a path or a file name inside "
                    "paths.weights_dir (see README, 'Real weights')"
                )
            path = resolve_weight(weights_dir, init_ckpt)
        parts = load_stylegan2_checkpoint(path)
        expected_g = f"stylegan2.Generator({self.generator_kwargs})"
        expected_d = f"stylegan2.Discriminator({self.discriminator_kwargs})"
        g_state = parts["g"] if parts["g"] is not None else parts["g_ema"]
        if g_state is None:
            raise ValueError(f"{path}: holds no generator weights ('g' or 'g_ema')")
        if parts["g"] is None:
            log.info("%s has no 'g'; the trained generator starts from its 'g_ema'", path)
        load_into(self.g, g_state, source=path, expected=expected_g)
        self._g_ema_state = parts["g_ema"]
        if parts["d"] is not None:
            load_into(self.d, parts["d"], source=path, expected=expected_d)
        elif self.hparams.freeze_d_blocks > 0:
            raise ValueError(
                f"{path} has no discriminator ('d'), so FreezeD (model.freeze_d_blocks="
                f"{self.hparams.freeze_d_blocks}) would freeze random layers. Use a file with "
                "'d' (rosinality convert_weight.py --disc, or a train.py checkpoint), or set "
                "model.freeze_d_blocks=0 to train the discriminator from scratch."
            )
        else:
            log.warning("%s has no discriminator ('d'): D starts from a random init", path)
        log.info("fine-tuning starts from %s", path)

    def _fresh_g_ema(self) -> nn.Module:
        g_ema = Generator(**self.generator_kwargs)
        load_into(
            g_ema,
            self._g_ema_state,
            source=self.hparams.init_ckpt,
            expected=f"stylegan2.Generator({self.generator_kwargs})",
        )
        self._g_ema_state = None  # not kept: it is in g_ema now
        return g_ema

    # -----------------------------------------------------------------------------------------
    # Lightning plumbing
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = float(self.hparams.lr)
        beta1, beta2 = (float(b) for b in self.hparams.betas)
        # lazy regularisation: D also takes one R1 step every r1_every minibatches, so its Adam
        # is rescaled as if those steps were spread out (StyleGAN2 appendix B)
        ratio = self.hparams.r1_every / (self.hparams.r1_every + 1)
        g_optim = torch.optim.Adam(self._g_trainable, lr=lr, betas=(beta1, beta2))
        d_optim = torch.optim.Adam(
            self._d_trainable, lr=lr * ratio, betas=(beta1**ratio, beta2**ratio)
        )
        return [g_optim, d_optim]

    @property
    def augment_p(self) -> float:
        """The augmentation probability in use now (ADA's when adaptive)."""
        return self.ada.probability

    def _latents(self, batch: int) -> list[Tensor]:
        style_dim = self.generator_kwargs.get("style_dim", 512)
        mixing = self.hparams.mixing_prob > 0 and torch.rand(()) < self.hparams.mixing_prob
        count = 2 if mixing else 1
        return [torch.randn(batch, style_dim, device=self.device) for _ in range(count)]

    def _augmented(self, images: Tensor) -> Tensor:
        return self.augment(images, p=self.augment_p)

    def _uncounted_step(self, optimizer: Any) -> None:
        """Step an optimizer through the strategy (precision plugin, hooks) WITHOUT Lightning's
        step counter, so that global_step counts generator steps only."""
        raw = getattr(optimizer, "optimizer", optimizer)
        self.trainer.strategy.optimizer_step(raw, closure=lambda: None)

    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(tensor, reduce_op="sum")
        return tensor

    def training_step(self, batch: Mapping[str, Tensor] | Tensor, batch_idx: int) -> None:
        real = batch["image"] if isinstance(batch, Mapping) else batch
        g_optim, d_optim = self.optimizers()
        step = self.global_step  # completed G steps
        batch_size = real.shape[0]

        # --- discriminator: logistic loss on augmented real and fake images
        set_requires_grad(self._g_trainable, False)
        set_requires_grad(self._d_trainable, True)
        with torch.no_grad():
            fake, _ = self.g(self._latents(batch_size))
        fake_logits = self.d(self._augmented(fake))
        real_logits = self.d(self._augmented(real))
        d_loss = d_logistic_loss(real_logits, fake_logits)
        d_optim.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self._uncounted_step(d_optim)
        if self.augment_cfg["adaptive"]:
            self.ada.update(real_logits, reduce=self._reduce_sum)

        # --- lazy R1 on (augmented) reals, gradient taken w.r.t. the un-augmented images
        logs = {
            "train/d_loss": d_loss.detach(),
            "train/real_score": real_logits.detach().mean(),
            "train/fake_score": fake_logits.detach().mean(),
            "train/aug_p": torch.tensor(self.augment_p),
            "train/r_t": self.ada.r_t.float(),
        }
        if self.hparams.r1_gamma > 0 and step % self.hparams.r1_every == 0:
            real_for_r1 = real.detach().requires_grad_(True)
            r1_logits = self.d(self._augmented(real_for_r1))
            r1 = r1_penalty(r1_logits, real_for_r1)
            # x r1_every: the penalty is applied once per r1_every steps with the same total
            # weight; 0 * logits keeps every D output in the graph (DDP)
            r1_loss = self.hparams.r1_gamma / 2 * r1 * self.hparams.r1_every
            d_optim.zero_grad(set_to_none=True)
            self.manual_backward(r1_loss + 0 * r1_logits[0].sum())
            self._uncounted_step(d_optim)
            logs["train/r1"] = r1.detach()

        # --- generator: non-saturating loss through the (frozen here) discriminator
        set_requires_grad(self._g_trainable, True)
        set_requires_grad(self._d_trainable, False)
        fake, _ = self.g(self._latents(batch_size))
        g_loss = g_nonsaturating_loss(self.d(self._augmented(fake)))
        g_optim.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        g_optim.step()  # the one counted step of the iteration
        self.g_steps += 1
        set_requires_grad(self._d_trainable, True)

        self._update_ema(batch_size * max(1, self.trainer.world_size))
        logs["train/g_loss"] = g_loss.detach()
        self.log_dict(logs, on_step=True, prog_bar=False, batch_size=batch_size)
        self.log("train/g_step", float(self.global_step), on_step=True, batch_size=batch_size)

        every = int(self.hparams.sample_every)
        if every > 0 and self.global_step % every == 0:
            self.write_samples()

    @torch.no_grad()
    def _update_ema(self, images_per_step: int) -> None:
        decay = self.hparams.ema_decay
        if decay is None:
            half_life_kimg = self.hparams.ema_kimg
            if half_life_kimg is None:
                half_life_kimg = images_per_step * 10 / 32
            decay = ema_decay_for(images_per_step, half_life_kimg)
        for ema_parameter, parameter in self._ema_pairs:
            ema_parameter.lerp_(parameter.detach(), 1.0 - decay)

    def on_train_start(self) -> None:
        if self.global_step == 0:
            self.write_samples()

    def on_train_end(self) -> None:
        self.write_samples()
        self.export()

    # -----------------------------------------------------------------------------------------
    # monitoring
    def sample_latents(self) -> Tensor:
        """The fixed z of the monitoring grids (same on any device, rank and resume)."""
        generator = torch.Generator().manual_seed(int(self.hparams.sample_seed))
        style_dim = self.generator_kwargs.get("style_dim", 512)
        return torch.randn(int(self.hparams.num_samples), style_dim, generator=generator)

    @torch.no_grad()
    def render_pairs(self, z: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(source G, adapted g_ema) images on the same z, with fixed noise."""
        z = (self.sample_latents() if z is None else z).to(self.device)
        truncation = float(self.hparams.sample_truncation)
        tile = int(self.hparams.sample_tile)
        images = []
        for net in (self.g_source, self.g_ema):
            kwargs: dict[str, Any] = {"randomize_noise": False}
            if truncation < 1.0:
                mean_w = self.mapping_mean(net).to(self.device)
                kwargs.update(truncation=truncation, truncation_latent=mean_w)
            image = torch.cat([net([chunk], **kwargs)[0] for chunk in z.split(8)])
            if tile > 0 and image.shape[-1] > tile:
                image = F.interpolate(image, size=(tile, tile), mode="area")
            images.append(image)
        return images[0], images[1]

    @rank_zero_only
    def write_samples(self) -> Path | None:
        """PNG grid (source row above adapted row, same z) to the run folder and the loggers."""
        if int(self.hparams.num_samples) <= 0 or self.trainer is None:
            return None
        source, adapted = self.render_pairs()
        grid = make_pair_grid(source, adapted, columns=8)
        folder = Path(self.trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.global_step:06d}.png"
        write_image(path, grid, overwrite=True)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image("samples/source_vs_adapted", images=[grid], step=self.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image(
                    "samples/source_vs_adapted", grid, self.global_step, dataformats="HWC"
                )
        return path

    # -----------------------------------------------------------------------------------------
    # export
    @torch.no_grad()
    def mapping_mean(
        self, net: nn.Module | None = None, count: int | None = None, seed: int = 0
    ) -> Tensor:
        """Mean W of `net`'s mapping (default g_ema) over `count` seeded z, [style_dim] on CPU."""
        net = self.g_ema if net is None else net
        count = int(count or self.hparams.latent_avg_samples)
        generator = torch.Generator().manual_seed(seed)
        style_dim = self.generator_kwargs.get("style_dim", 512)
        total = torch.zeros(style_dim, dtype=torch.float64)
        for start in range(0, count, 1024):
            z = torch.randn(min(1024, count - start), style_dim, generator=generator)
            total += net.get_latent(z.to(self.device)).double().sum(0).cpu()
        return (total / count).float()

    def rosinality_state(self) -> dict[str, Any]:
        """`{"g_ema", "latent_avg", "g", "d"}` on CPU, the layout of a converted rosinality file."""

        def cpu(module: nn.Module) -> dict[str, Tensor]:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

        return {
            "g_ema": cpu(self.g_ema),
            "latent_avg": self.mapping_mean(),
            "g": cpu(self.g),
            "d": cpu(self.d),
        }

    def default_export_path(self) -> Path:
        if self.hparams.export_path:
            return Path(self.hparams.export_path).expanduser()
        root = self.trainer.default_root_dir if self.trainer is not None else os.getcwd()
        return Path(root) / "G_t.pt"

    @rank_zero_only
    def export(self, path: str | Path | None = None) -> Path:
        """Write the rosinality checkpoint atomically, and `<name>.yaml` beside it with the
        architecture (to rebuild Generator/Discriminator), step count and run config."""
        path = Path(path) if path is not None else self.default_export_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.rosinality_state(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
        sidecar = {
            "checkpoint": path.name,
            "generator": self.generator_kwargs,
            "discriminator": self.discriminator_kwargs,
            "g_steps": int(self.g_steps),
            "init_ckpt": self.hparams.init_ckpt,
            "model": _plain(dict(self.hparams)),
            "run_config": _run_config(),
        }
        config_path = path.with_suffix(".yaml")
        atomic_write_bytes(config_path, OmegaConf.to_yaml(OmegaConf.create(sidecar)).encode())
        log.info("wrote G_t (rosinality format) to %s and its config to %s", path, config_path)
        return path


def _run_config() -> dict[str, Any] | None:
    """The composed Hydra config of this run (its .hydra/config.yaml, resolved), if any."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        saved = Path(HydraConfig.get().runtime.output_dir) / ".hydra" / "config.yaml"
    except Exception:  # noqa: BLE001 - no Hydra runtime: nothing to copy
        return None
    if not saved.is_file():
        return None
    config = OmegaConf.load(saved)
    try:  # inside the Hydra job every interpolation (paths, ${hydra:...}) resolves
        return OmegaConf.to_container(config, resolve=True)
    except Exception:  # noqa: BLE001 - a resolver missing here: keep the config as written
        log.info("run config kept unresolved (an interpolation does not resolve here)")
        return OmegaConf.to_container(config, resolve=False)
