"""Exponential moving average of a network's weights (the copy of F that is shipped).

theta_ema <- d * theta_ema + (1 - d) * theta after every optimiser step; buffers are copied.
With warm-up the decay is min(d, (1 + n) / (10 + n)) after n updates, so the average is not
dominated by the random initial weights early in short runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage(nn.Module):
    """Holds `module`, an averaged copy of `model`; call `update(model)` after each step.

    The copy and the update counter are ordinary submodule/buffer state, so a parent's
    `state_dict()` saves and restores them (keys `module.*` and `num_updates`). The copy stays in
    eval mode and never requires grad. `forward` runs the averaged copy.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """Decay the next update will use."""
        if not self.warmup:
            return self.decay
        updates = int(self.num_updates)
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend `model`'s parameters into the average and copy its buffers."""
        decay = self.current_decay()
        averaged = dict(self.module.named_parameters())
        for name, parameter in model.named_parameters():
            target = averaged[name]
            target.lerp_(parameter.detach().to(target.dtype), 1.0 - decay)
        averaged_buffers = dict(self.module.named_buffers())
        for name, buffer in model.named_buffers():
            averaged_buffers[name].copy_(buffer)
        self.num_updates += 1

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Reset the average to `model`'s current weights."""
        self.module.load_state_dict(model.state_dict())

    def train(self, mode: bool = True) -> ExponentialMovingAverage:
        # The average is only ever evaluated; keep norm layers etc. in eval behaviour.
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
