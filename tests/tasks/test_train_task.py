"""train(cfg) in-process on the real config tree under debug=tiny: files, metrics, resume, W&B."""

from __future__ import annotations

import json

import pytest
import torch

from portrait_toon import config
from portrait_toon.tasks import train as train_task

METRIC_KEYS = {
    "l1_output_target",
    "l1_input_target",
    "skin_delta_e00_mean",
    "skin_delta_e00_by_bin",
    "background_delta_e00_mean",
    "num_images",
    "steps",
}


def compose(output_dir, *overrides):
    return config.compose_config("train", ["debug=tiny", *overrides], output_dir)


class IndexRecorder:
    """Records the pair indices of every training batch (after synthesis)."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        class _Callback(pl.Callback):
            def on_train_batch_start(inner, trainer, module, batch, batch_idx):  # noqa: N805
                self.indices.append(batch["index"].tolist())

        self.indices: list[list[int]] = []
        self.callback = _Callback()


def record_indices(monkeypatch) -> IndexRecorder:
    recorder = IndexRecorder()
    build = train_task.build_callbacks
    monkeypatch.setattr(
        train_task,
        "build_callbacks",
        lambda cfg, have_logger: [*build(cfg, have_logger), recorder.callback],
    )
    return recorder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One debug=tiny run with W&B (offline: no API key here) and CSV loggers, shared by the
    tests that inspect its folder."""
    output_dir = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("WANDB_MODE", raising=False)
        patch.delenv("WANDB_API_KEY", raising=False)
        patch.setenv("NETRC", str(output_dir / "no_netrc"))
        metrics = train_task.train(compose(output_dir, "logger=many"))
    return output_dir, metrics


def test_tiny_run_writes_checkpoint_metrics_report_and_stylizer(tiny_run):
    from portrait_toon.data.images import read_image
    from portrait_toon.utils.generator_file import load_stylizer

    output_dir, metrics = tiny_run
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    assert set(metrics) >= METRIC_KEYS
    assert metrics["steps"] == 4 and metrics["num_images"] == 4
    assert json.loads((output_dir / "metrics.json").read_text()) == metrics
    assert metrics["l1_input_target"] > 0
    report = read_image(output_dir / "demo_report.png")
    assert report.shape[0] > 32 and report.shape[1] > 32
    net = load_stylizer(output_dir / "stylizer.pt")  # what stylize.py loads
    assert net(torch.zeros(1, 3, 40, 56)).shape == (1, 3, 40, 56)
    assert (output_dir / "csv" / "metrics.csv").is_file()


def test_checkpoint_holds_the_data_stream_position(tiny_run):
    output_dir, _ = tiny_run
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    # 4 steps x batch 2 consumed: the next unseen pair index is 8
    assert checkpoint["OnTheFlyDataModule"] == {"next_position": 8}


def test_resume_continues_the_step_count_and_the_pair_stream(tiny_run, tmp_path, monkeypatch):
    output_dir, _ = tiny_run
    recorder = record_indices(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(
        tmp_path,
        "logger=wandb",
        f"ckpt_path={output_dir}",  # a run folder: its checkpoints/last.ckpt
        "trainer.max_steps=6",
        "evaluate.enabled=false",
        "evaluate.export=false",
    )
    train_task.train(cfg)
    assert recorder.indices == [[8, 9], [10, 11]]  # steps 5 and 6: the next unseen pairs
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 6
    # the resumed job logs into the same W&B run
    run_id = (output_dir / train_task.WANDB_RUN_ID_FILE).read_text()
    assert (tmp_path / train_task.WANDB_RUN_ID_FILE).read_text() == run_id


def test_wandb_runs_offline_and_is_finished(tiny_run):
    import wandb

    output_dir, _ = tiny_run
    assert wandb.run is None  # finished: the next job of a sweep cannot log into it
    run_id = (output_dir / train_task.WANDB_RUN_ID_FILE).read_text()
    assert list((output_dir / "wandb").glob(f"offline-run-*-{run_id}"))


def test_a_failing_job_still_finishes_its_wandb_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("pytorch_lightning.Trainer.fit", explode)
    cfg = compose(tmp_path, "logger=wandb", "evaluate.enabled=false", "evaluate.export=false")
    with pytest.raises(RuntimeError, match="boom"):
        train_task.train(cfg)
    assert (tmp_path / train_task.WANDB_RUN_ID_FILE).is_file()  # a run was started ...
    assert wandb.run is None  # ... and finished


def test_wandb_offline_decision(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert "no W&B API key" in train_task.wandb_offline_reason()
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    assert train_task.wandb_offline_reason() is None
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_MODE", "online")  # an explicit choice is kept
    assert train_task.wandb_offline_reason() is None


@pytest.mark.slow  # synthesis + a training run (~10-40 s on 2 shared cores)
def test_training_from_shards_written_by_synthesize(tmp_path):
    from portrait_toon.tasks.synthesize import synthesize

    pairs_dir = tmp_path / "pairs"
    cfg = config.compose_config(
        "synthesize", ["debug=tiny", f"out_dir={pairs_dir}", "device=cpu"], tmp_path / "synth"
    )
    config.apply_set_if_present(cfg)
    synthesize(cfg)  # 6 pairs at 32 px
    cfg = compose(
        tmp_path / "train",
        "data=shards",
        f"data.root={pairs_dir}",
        "logger=none",
        "trainer.max_steps=3",
        "evaluate.enabled=false",
        "evaluate.export=false",
    )
    train_task.train(cfg)
    checkpoint = torch.load(tmp_path / "train" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["ShardsDataModule"] == {"next_position": 6}


def test_evaluate_task_reproduces_the_training_runs_metrics(tiny_run, tmp_path):
    from portrait_toon.tasks.evaluate import evaluate

    output_dir, train_metrics = tiny_run
    cfg = config.compose_config(
        "evaluate", ["debug=tiny", f"ckpt_path={output_dir}", "device=cpu"], tmp_path
    )
    metrics = evaluate(cfg)  # loads <run>/stylizer.pt, same held-out pairs
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "demo_report.png").is_file()
    assert metrics["steps"] == 4
    for key in ("l1_output_target", "l1_input_target", "skin_delta_e00_mean"):
        assert metrics[key] == pytest.approx(train_metrics[key], rel=1e-4)
