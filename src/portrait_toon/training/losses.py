"""Losses of the stylization network: L1, perceptual, and GAN (hinge / non-saturating).

Total generator loss (docs/method.md §4): l1 * L1 + perceptual.weight * P + adv.weight * GAN,
the adversarial term only after `adv.warmup_steps`. GAN losses take the discriminator's list of
logit maps (one per scale) and average over scales.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PERCEPTUAL_KINDS = ("stlpips", "vgg19", "none")
ADV_KINDS = ("hinge", "nsgan", "none")


def _as_list(logits: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def d_hinge_loss(
    real: torch.Tensor | list[torch.Tensor], fake: torch.Tensor | list[torch.Tensor]
) -> torch.Tensor:
    """Discriminator hinge loss: mean over scales of E[relu(1 - D(real))] + E[relu(1 + D(fake))]."""
    real, fake = _as_list(real), _as_list(fake)
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def g_hinge_loss(fake: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Generator hinge loss: mean over scales of -E[D(fake)]."""
    return torch.stack([-f.mean() for f in _as_list(fake)]).mean()


def d_nsgan_loss(
    real: torch.Tensor | list[torch.Tensor], fake: torch.Tensor | list[torch.Tensor]
) -> torch.Tensor:
    """Discriminator logistic loss: E[softplus(-D(real))] + E[softplus(D(fake))] (= BCE)."""
    real, fake = _as_list(real), _as_list(fake)
    terms = [F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def g_nsgan_loss(fake: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Non-saturating generator loss: E[softplus(-D(fake))] = -E[log sigmoid(D(fake))]."""
    return torch.stack([F.softplus(-f).mean() for f in _as_list(fake)]).mean()


GAN_LOSSES = {"hinge": (d_hinge_loss, g_hinge_loss), "nsgan": (d_nsgan_loss, g_nsgan_loss)}


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels and channels."""
    return (output - target).abs().mean()


@dataclass
class PerceptualConfig:
    """`loss.perceptual`: which network, its weight and its cost knobs."""

    kind: str = "stlpips"
    weight: float = 1.0
    max_size: int | None = None  # downscale both images to this longer side first
    every_n_steps: int = 1  # compute on every n-th step only (it dominates CPU step time)
    # stlpips: None = the wheel's file; vgg19: required (the config defaults it to
    # paths.weights_dir/vgg19-dcbb9e9d.pth, config.perceptual_weights)
    weights_path: str | None = None


@dataclass
class AdversarialConfig:
    """`loss.adv`: GAN loss kind, weight and the number of steps before it switches on."""

    kind: str = "hinge"
    weight: float = 0.1
    warmup_steps: int = 0


@dataclass
class LossConfig:
    """The `loss` config group (conf/loss/default.yaml)."""

    l1: float = 1.0
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    adv: AdversarialConfig = field(default_factory=AdversarialConfig)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None) -> LossConfig:
        """Build from a dict or DictConfig; unknown keys are an error naming the key."""
        config = _to_dict(config)
        unknown = set(config) - {"l1", "perceptual", "adv"}
        if unknown:
            raise ValueError(
                f"loss config: unknown keys {sorted(unknown)} (expected l1, perceptual, adv)"
            )
        perceptual = _to_dict(config.get("perceptual"))
        adv = _to_dict(config.get("adv"))
        _check_keys("loss.perceptual", perceptual, PerceptualConfig)
        _check_keys("loss.adv", adv, AdversarialConfig)
        result = cls(
            l1=float(config.get("l1", 1.0)),
            perceptual=PerceptualConfig(**perceptual),
            adv=AdversarialConfig(**adv),
        )
        result.validate()
        return result

    def validate(self) -> None:
        if self.perceptual.kind not in PERCEPTUAL_KINDS:
            raise ValueError(
                f"loss.perceptual.kind={self.perceptual.kind!r} is not one of {PERCEPTUAL_KINDS}"
            )
        if self.adv.kind not in ADV_KINDS:
            raise ValueError(f"loss.adv.kind={self.adv.kind!r} is not one of {ADV_KINDS}")
        if self.perceptual.every_n_steps < 1:
            raise ValueError(
                f"loss.perceptual.every_n_steps must be >= 1, got {self.perceptual.every_n_steps}"
            )
        if self.adv.warmup_steps < 0:
            raise ValueError(f"loss.adv.warmup_steps must be >= 0, got {self.adv.warmup_steps}")

    @property
    def uses_perceptual(self) -> bool:
        return self.perceptual.kind != "none" and self.perceptual.weight > 0

    @property
    def uses_adversarial(self) -> bool:
        return self.adv.kind != "none" and self.adv.weight > 0


def _to_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return dict(OmegaConf.to_container(config, resolve=True))
    except ImportError:  # omegaconf is a dependency; this only guards odd installs
        pass
    if not isinstance(config, Mapping):
        raise TypeError(f"loss config must be a mapping, got {type(config).__name__}")
    return dict(config)


def _check_keys(where: str, values: Mapping[str, Any], schema: type) -> None:
    unknown = set(values) - set(schema.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {sorted(unknown)} "
            f"(expected {sorted(schema.__dataclass_fields__)})"
        )


def build_perceptual(config: PerceptualConfig) -> nn.Module | None:
    """The perceptual network for `config.kind` (None for "none" or weight 0)."""
    if config.kind == "none" or config.weight <= 0:
        return None
    from portrait_toon.nets.perceptual import ShiftTolerantLPIPS, VGGPerceptual

    if config.kind == "stlpips":
        return ShiftTolerantLPIPS(weights_path=config.weights_path, max_size=config.max_size)
    return VGGPerceptual(weights_path=config.weights_path, max_size=config.max_size)


class StylizerLoss(nn.Module):
    """All of F's losses with their weights; holds the frozen perceptual network.

    `generator_losses(output, target, step, fake_logits)` returns the weighted total and the
    unweighted terms for logging; `discriminator_loss(real_logits, fake_logits)` the D loss.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | LossConfig | None = None,
        perceptual: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config if isinstance(config, LossConfig) else LossConfig.from_mapping(config)
        # A given module wins (tests, custom nets); otherwise build what the config names.
        self.perceptual = (
            perceptual if perceptual is not None else build_perceptual(self.config.perceptual)
        )
        if self.config.uses_adversarial:
            self._d_loss, self._g_loss = GAN_LOSSES[self.config.adv.kind]
        # The perceptual network is frozen and public: keep its ~60 MB out of checkpoints.
        self.register_state_dict_post_hook(_drop_perceptual_from_state_dict)
        self.register_load_state_dict_post_hook(_ignore_missing_perceptual_keys)

    def adversarial_active(self, step: int) -> bool:
        """GAN terms switch on once `step` (completed generator steps) reaches the warm-up."""
        return self.config.uses_adversarial and step >= self.config.adv.warmup_steps

    def perceptual_active(self, step: int) -> bool:
        return self.perceptual is not None and step % self.config.perceptual.every_n_steps == 0

    def generator_losses(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        step: int,
        fake_logits: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: dict[str, torch.Tensor] = {}
        terms["l1"] = l1_loss(output, target)
        total = self.config.l1 * terms["l1"]
        if self.perceptual_active(step):
            terms["perceptual"] = self.perceptual(output, target).mean()
            total = total + self.config.perceptual.weight * terms["perceptual"]
        if fake_logits is not None:
            terms["g_adv"] = self._g_loss(fake_logits)
            total = total + self.config.adv.weight * terms["g_adv"]
        terms["g_total"] = total
        return total, terms

    def discriminator_loss(
        self, real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]
    ) -> torch.Tensor:
        return self._d_loss(real_logits, fake_logits)


def _drop_perceptual_from_state_dict(
    module: StylizerLoss, state_dict: dict, prefix: str, local_metadata: dict
) -> None:
    for key in [key for key in state_dict if key.startswith(prefix + "perceptual.")]:
        del state_dict[key]


def _ignore_missing_perceptual_keys(module: StylizerLoss, incompatible_keys: Any) -> None:
    if module.perceptual is None:
        return
    frozen = {"perceptual." + key for key in module.perceptual.state_dict()}
    incompatible_keys.missing_keys[:] = [
        key
        for key in incompatible_keys.missing_keys
        if not any(key == f or key.endswith("." + f) for f in frozen)
    ]
