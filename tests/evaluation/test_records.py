"""evaluation/records.py: JSON-ready metrics, atomic JSON, the step a measured file records."""

from __future__ import annotations

import json

import torch

from portrait_toon.evaluation.records import checkpoint_step, json_ready, write_json


def test_json_ready_turns_tensors_into_numbers_and_lists() -> None:
    value = {1: torch.tensor(0.5), "bins": (torch.tensor([1.0, 2.0]), None), "n": 3}
    assert json_ready(value) == {"1": 0.5, "bins": [[1.0, 2.0], None], "n": 3}


def test_write_json_writes_the_ready_record(tmp_path) -> None:
    path = write_json(tmp_path / "metrics.json", {"l1": torch.tensor(0.25), "steps": 4})
    assert json.loads(path.read_text()) == {"l1": 0.25, "steps": 4}


def test_checkpoint_step_of_lightning_and_stylizer_files(tmp_path) -> None:
    weights = {"w": torch.zeros(1)}
    torch.save({"state_dict": weights, "global_step": 12}, tmp_path / "last.ckpt")
    torch.save({"state_dict": weights, "meta": {"global_step": 7}}, tmp_path / "stylizer.pt")
    torch.save(weights, tmp_path / "bare.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert checkpoint_step(tmp_path / "last.ckpt") == 12
    assert checkpoint_step(tmp_path / "stylizer.pt") == 7
    assert checkpoint_step(tmp_path / "bare.pt") == 0  # nothing recorded
    assert checkpoint_step(tmp_path / "broken.pt") == 0  # only for the report: never raises
