"""Score the held-out targets themselves as if they were F's outputs: the metrics a perfect F
would get (README, "What the demo shows": where the skin measure's floor lies).

    python scripts/score_targets.py experiment=demo
    python scripts/score_targets.py experiment=demo augmentation.color_reflection.enabled=false

Words are train.py's Hydra overrides (the held-out pairs are the ones train.py's final
evaluation makes with that config). Prints the skin and L1 metrics as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch
from torch import nn

PRINTED = (
    "skin_delta_e00_mean",
    "skin_delta_e00_by_bin",
    "skin_delta_e00_source_region_mean",
    "l1_output_target",
    "l1_input_target",
    "num_images",
)


class TargetOracle(nn.Module):
    """Returns the held-out batches' targets, in the order the metric asks for outputs."""

    def __init__(self, targets: list[torch.Tensor]) -> None:
        super().__init__()
        self.targets = list(targets)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        target = self.targets.pop(0)
        if target.shape != src.shape:
            raise RuntimeError("TargetOracle: batches asked for out of order")
        return target.to(src.device)


def parse_args(argv: list[str]) -> list[str]:
    """The Hydra overrides (`key=value` words); anything else is an error naming it."""
    bad = [word for word in argv if "=" not in word or word.startswith("-")]
    if bad:
        raise SystemExit(f"score_targets.py takes train.py overrides (key=value), not {bad}")
    return list(argv)


def score_targets(overrides: list[str]) -> dict:
    from portrait_toon import config
    from portrait_toon.evaluation.metrics import evaluate_stylizer
    from portrait_toon.tasks.evaluate import heldout_sets

    with tempfile.TemporaryDirectory() as scratch:
        cfg = config.compose_config("train", overrides, scratch)
        config.apply_set_if_present(cfg)
        batches = heldout_sets(cfg, torch.device("cpu"), names=("plain",))["plain"]
        metrics = evaluate_stylizer(TargetOracle([b["tgt"] for b in batches]), batches)
    return {key: metrics.get(key) for key in PRINTED}


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(score_targets(overrides), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
