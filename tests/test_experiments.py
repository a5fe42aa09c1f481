"""Every experiment config trains in-process: Lightning's fast_dev_run (one training step, one
validation step, no checkpoints or logger) on the experiment's own components at debug=tiny
sizes; and `make demo` end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from portrait_toon import config
from portrait_toon.tasks import train as train_task

EXPERIMENTS = sorted(p.stem for p in (config.CONF_DIR / "experiment").glob("*.yaml"))
PROJECT_ROOT = config.CONF_DIR.parent


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment, tmp_path):
    cfg = config.compose_config(
        "train",
        [
            f"experiment={experiment}",
            "debug=tiny",
            "trainer.fast_dev_run=true",
            "logger=none",
            # no weight files here: experiments on real networks build them tiny and random
            f"paths.weights_dir={tmp_path / 'weights'}",
        ],
        tmp_path / "run",
    )
    train_task.train(cfg)
    # one optimisation step of the experiment's own model, saved as the run's last state
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 1


@pytest.mark.slow
def test_make_demo_trains_and_reports(tmp_path):
    """The README's first command at reduced steps: checkpoint, grids, metrics, report."""
    run_dir = tmp_path / "demo"
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "demo",
            "trainer.max_steps=20",
            "callbacks.model_checkpoint.every_n_train_steps=10",
            "callbacks.sample_grid.every_n_steps=10",
            "evaluate.num_images=16",
            "evaluate.num_cutface=4",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        timeout=900,
    )
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "samples").glob("*.png"))
    assert (run_dir / "demo_report.png").stat().st_size > 10_000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["num_images"] >= 16
    assert Path(run_dir / "stylizer.pt").is_file()
