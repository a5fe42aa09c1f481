"""Precision is a config choice: fp32 on CPU trainers, bf16-mixed on GPU ones, and a warning
naming `trainer.precision` when bf16/fp16 is asked for on the CPU."""

from __future__ import annotations

import logging

import pytest

from portrait_toon import config


def trainer_config(tmp_path, *overrides: str):
    return config.compose_config("train", ["debug=tiny", *overrides], tmp_path)


@pytest.mark.parametrize(
    ("trainer", "precision"),
    [("cpu", "32-true"), ("ddp_cpu", "32-true"), ("gpu", "bf16-mixed"), ("ddp", "bf16-mixed")],
)
def test_trainer_precision_defaults(tmp_path, trainer, precision):
    assert trainer_config(tmp_path, f"trainer={trainer}").trainer.precision == precision


def test_bf16_on_cpu_warns_naming_the_key(tmp_path, caplog):
    cfg = trainer_config(tmp_path, "trainer=cpu", "trainer.precision=bf16-mixed")
    with caplog.at_level(logging.WARNING, logger="portrait_toon.config"):
        config.validate(cfg, check_weights=False)
    assert "trainer.precision=bf16-mixed" in caplog.text and "32-true" in caplog.text
    for fine in ("trainer=cpu", "trainer=gpu"):
        assert config.cpu_half_precision_warning(trainer_config(tmp_path, fine)) is None
