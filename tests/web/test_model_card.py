"""The page's model panel: what a user is told about the loaded model (from Stylizer.info)."""

from __future__ import annotations

import pytest

from portrait_toon.config import ConfigError
from portrait_toon.tasks.app import page_tile_choice
from portrait_toon.web.model_card import details, summary

METRICS = {
    "l1_output_target": 0.06,
    "l1_input_target": 0.12,
    "skin_delta_e00_by_bin": {"dark": 1.5, "light": 2.25},
    "steps": 3965,
}


def info(trained_on: str, **extra) -> dict:
    return {
        "source": "/runs/a/stylizer.pt",
        "network": "UNet",
        "steps": 3965,
        "run_dir": "/runs/a",
        "trained_on": trained_on,
        "components": {"generator": "ProceduralGenerator"},
        "experiment": "demo",
        "resolution": 128,
        "metrics": METRICS,
        **extra,
    }


def test_summary_says_what_the_model_saw_and_what_to_expect() -> None:
    demo = summary(info("embedded world"))
    assert "embedded world" in demo and "never seen a real photo" in demo
    assert "3965 training steps" in demo and "128 px" in demo
    assert "0.0600 vs 0.1200" in demo and "ratio 0.50" in demo

    real = summary(info("real weights"))
    assert "real networks" in real and "never seen a real photo" not in real

    unknown = summary(info("unknown", run_dir=None, metrics=None))
    assert "unknown" in unknown and "no run folder beside `/runs/a/stylizer.pt`" in unknown
    assert "L1" not in unknown


def test_details_list_the_run_and_every_metric() -> None:
    text = details(info("embedded world"))
    assert "| experiment | demo |" in text
    assert "| skin_delta_e00_by_bin.dark | 1.5 |" in text
    assert "| l1_output_target | 0.06 |" in text
    assert "No metrics.json" in details(info("unknown", metrics=None))


def test_tile_setting_becomes_the_pages_choice() -> None:
    assert page_tile_choice("auto") == "auto"
    assert page_tile_choice(None) == "one pass"
    assert page_tile_choice(768) == "768"
    with pytest.raises(ConfigError, match="tile=-3"):
        page_tile_choice(-3)
