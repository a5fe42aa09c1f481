"""tasks/evaluate.py `heldout_sets`: only the sets asked for are made, each with the same pairs
as when all three are made (scripts/score_targets.py asks for the plain frames only)."""

from __future__ import annotations

import pytest
import torch

from portrait_toon import config
from portrait_toon.tasks import evaluate


@pytest.fixture(scope="module")
def cfg():
    cfg = config.compose_config(
        "train",
        ["experiment=ablation/cutface", "debug=tiny", "evaluate.num_unseen_landscape=2"],
    )
    config.apply_set_if_present(cfg)
    return cfg


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["src"], y["src"]) and torch.equal(x["tgt"], y["tgt"]) for x, y in zip(a, b)
    )


def test_only_the_asked_sets_are_made_with_the_same_pairs(cfg, monkeypatch) -> None:
    cpu = torch.device("cpu")
    every = evaluate.heldout_sets(cfg, cpu)
    assert set(every) == {"plain", "cutface", "unseen_landscape"}
    made: list[object] = []
    synthesized = evaluate._synthesized
    monkeypatch.setattr(
        evaluate, "_synthesized", lambda *a, **k: made.append(a[1]) or synthesized(*a, **k)
    )
    for name in evaluate.HELDOUT_SETS:
        made.clear()
        alone = evaluate.heldout_sets(cfg, cpu, names=(name,))
        assert set(alone) == {name} and len(made) == 1  # one set synthesized, not three
        assert same(alone[name], every[name]), name
    with pytest.raises(ValueError, match="no held-out set \\['cut_face'\\]"):
        evaluate.heldout_sets(cfg, cpu, names=("cut_face",))
