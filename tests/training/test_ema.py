"""EMA of F: the exact update rule, warm-up, buffers, state_dict round trip, eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from portrait_toon.training.ema import ExponentialMovingAverage


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_update_rule_without_warmup() -> None:
    model = make_model()
    ema = ExponentialMovingAverage(model, decay=0.9, warmup=False)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * start + 0.1 * (start + 1.0))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    expected = 0.9 * (0.9 * start + 0.1 * (start + 1.0)) + 0.1 * (start + 2.0)
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert int(ema.num_updates) == 2


def test_warmup_schedule() -> None:
    ema = ExponentialMovingAverage(make_model(), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.num_updates.fill_(90)
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates.fill_(100000)
    assert ema.current_decay() == 0.999


def test_buffers_are_copied_not_averaged() -> None:
    model = make_model()
    ema = ExponentialMovingAverage(model, decay=0.5, warmup=False)
    model.train()
    model(torch.randn(8, 3))  # moves BatchNorm running stats
    ema.update(model)
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)


def test_state_dict_round_trip_and_frozen_copy() -> None:
    model = make_model()
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.mul_(3)
    ema.update(model)
    restored = ExponentialMovingAverage(make_model(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module[0].weight, ema.module[0].weight)
    assert int(restored.num_updates) == 1
    assert not any(p.requires_grad for p in restored.parameters())
    restored.train()
    assert not restored.module.training  # the average is only ever evaluated


def test_bad_decay() -> None:
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(make_model(), decay=1.5)
