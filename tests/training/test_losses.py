"""Losses on tiny tensors: known hinge / logistic values, config parsing, term switching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from portrait_toon.training.losses import (
    LossConfig,
    StylizerLoss,
    d_hinge_loss,
    d_nsgan_loss,
    g_hinge_loss,
    g_nsgan_loss,
    l1_loss,
)


def test_hinge_values_on_known_logits() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2 -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2 -> mean 1
    assert d_hinge_loss(real, fake).item() == pytest.approx(5 / 6 + 1)
    assert g_hinge_loss(fake).item() == pytest.approx(1 / 3 * -(-2.0 + 0.0 + 1.0))


def test_multiscale_lists_average_over_scales() -> None:
    real = [torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 1, 1), 0.0)]  # 0 and 1
    fake = [torch.full((1, 1, 2, 2), -1.0), torch.full((1, 1, 1, 1), 1.0)]  # 0 and 2
    assert d_hinge_loss(real, fake).item() == pytest.approx((0 + 0 + 1 + 2) / 2)
    assert g_hinge_loss(fake).item() == pytest.approx((1.0 - 1.0) / 2)


def test_nsgan_values() -> None:
    zero = torch.zeros(4)
    # At D = 0 every logistic term is log 2.
    assert d_nsgan_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert g_nsgan_loss(zero).item() == pytest.approx(math.log(2))
    confident = torch.full((4,), 20.0)
    assert d_nsgan_loss(confident, -confident).item() < 1e-6
    # Non-saturating: the generator still gets a gradient when D confidently rejects it.
    fake = torch.full((4,), -20.0, requires_grad=True)
    g_nsgan_loss(fake).backward()
    assert fake.grad.abs().sum() > 0.5


def test_l1() -> None:
    a = torch.zeros(1, 3, 2, 2)
    b = torch.full((1, 3, 2, 2), 0.5)
    b[0, 0, 0, 0] = -1.5
    assert l1_loss(a, b).item() == pytest.approx((0.5 * 11 + 1.5) / 12)


class ConstantPerceptual(nn.Module):
    """A stand-in perceptual net: mean squared difference per sample, with one parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.scale * (x - y).pow(2).mean(dim=(1, 2, 3))


def test_weighted_total_and_schedule() -> None:
    config = {
        "l1": 2.0,
        "perceptual": {"kind": "stlpips", "weight": 0.5, "every_n_steps": 2},
        "adv": {"kind": "hinge", "weight": 0.1, "warmup_steps": 3},
    }
    loss = StylizerLoss(config, perceptual=ConstantPerceptual())
    output, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    logits = [torch.full((2, 1, 2, 2), -1.0)]
    total, terms = loss.generator_losses(output, target, step=4, fake_logits=logits)
    assert terms["l1"].item() == 1.0 and terms["perceptual"].item() == 1.0
    assert terms["g_adv"].item() == 1.0
    assert total.item() == pytest.approx(2.0 + 0.5 + 0.1)
    _, odd_terms = loss.generator_losses(output, target, step=3)
    assert "perceptual" not in odd_terms  # only every 2nd step
    assert not loss.adversarial_active(2) and loss.adversarial_active(3)


def test_frozen_perceptual_net_stays_out_of_state_dict() -> None:
    loss = StylizerLoss({"perceptual": {"kind": "stlpips"}}, perceptual=ConstantPerceptual())
    holder = nn.ModuleDict({"loss": loss})
    assert not any("perceptual" in key for key in holder.state_dict())
    holder.load_state_dict({}, strict=True)  # nothing missing: the frozen net is not saved


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"perceptual": {"kind": "alexnet"}}, "loss.perceptual.kind='alexnet'"),
        ({"adv": {"kind": "wgan"}}, "loss.adv.kind='wgan'"),
        ({"adv": {"warmup": 3}}, r"loss.adv: unknown keys \['warmup'\]"),
        ({"l2": 1.0}, r"unknown keys \['l2'\]"),
        ({"perceptual": {"every_n_steps": 0}}, "every_n_steps must be >= 1"),
    ],
)
def test_bad_config_names_the_field(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossConfig.from_mapping(config)


def test_omegaconf_input() -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"l1": 1.0, "perceptual": {"kind": "none"}, "adv": {"weight": 0}})
    parsed = LossConfig.from_mapping(config)
    assert not parsed.uses_perceptual and not parsed.uses_adversarial
