"""Resume end to end through the train task with `ckpt_path=last`: an interrupted run continues
at the checkpointed step with the next unseen pairs and the same W&B run, and its losses from
then on equal those of a run that was never interrupted; a job killed with SIGKILL loses at
most the steps since its last checkpoint.

`StepRecorder` is a test-only callback (loaded by dotted path in the subprocess test).
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from portrait_toon import config, resume
from portrait_toon.tasks import train as train_task

REPO_ROOT = Path(__file__).resolve().parents[1]


class StepRecorder(pl.Callback):
    """Per training step: the step number, the generator loss and the pair indices; kept in
    `steps` and, with `path`, appended to a JSON-lines file (flushed: it survives a SIGKILL)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path) if path else None
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {
            "step": int(trainer.global_step),
            "loss": float(loss),
            "index": [int(i) for i in batch["index"].tolist()],
        }
        self.steps.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")


class CrashAfterStep(pl.Callback):
    """Raises after training step `step` (a crash between two checkpoints)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


def add_callbacks(monkeypatch, *extra: pl.Callback) -> None:
    build = train_task.build_callbacks
    monkeypatch.setattr(
        train_task, "build_callbacks", lambda cfg, have_logger: [*build(cfg, have_logger), *extra]
    )


def compose(output_dir: Path, *overrides: str):
    return config.compose_config(
        "train",
        [
            "debug=tiny",  # checkpoints every 2 steps, GAN (and D's steps) on from step 3
            "trainer=cpu",
            "trainer.max_steps=4",
            "loss.perceptual.kind=none",  # VGG16 backward: most of a CPU step, beside the point
            "evaluate.enabled=false",
            "evaluate.export=false",
            *overrides,
        ],
        output_dir,
    )


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_interrupted_run_resumed_with_ckpt_path_last_matches_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    # a run crashes after step 3; its last checkpoint is from step 2. Up to the crash it is an
    # uninterrupted run: its step 3 is the reference for the resumed step 3.
    run_dir = tmp_path / "run"
    crashed = StepRecorder()
    with monkeypatch.context() as patch:
        add_callbacks(patch, crashed, CrashAfterStep(3))
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_task.train(compose(run_dir, "logger=wandb"))
    assert [s["step"] for s in crashed.steps] == [1, 2, 3]
    assert checkpoint(run_dir)["global_step"] == 2
    run_id = (run_dir / train_task.WANDB_RUN_ID_FILE).read_text()

    # W&B names an offline segment's folder by the second it starts: keep the two apart
    time.sleep(1.1)
    # rerun in its folder with ckpt_path=last: step 3 again, as if nothing had happened, then 4
    resumed = StepRecorder()
    with monkeypatch.context() as patch:
        add_callbacks(patch, resumed)
        train_task.train(compose(run_dir, "logger=wandb", "ckpt_path=last"))
    assert [s["step"] for s in resumed.steps] == [3, 4]
    step3_before, step3_after = crashed.steps[2], resumed.steps[0]
    assert step3_after["index"] == step3_before["index"] == [4, 5]  # same stream position
    # same F, D (the GAN is on from step 3), optimiser states: the same loss
    assert step3_after["loss"] == pytest.approx(step3_before["loss"], rel=1e-5, abs=1e-7)
    assert resumed.steps[1]["index"] == [6, 7]
    final = checkpoint(run_dir)
    assert final["global_step"] == 4
    assert final["OnTheFlyDataModule"] == {"next_position": 8}

    # the same W&B run continued: its id kept, a second offline segment of that run
    assert (run_dir / train_task.WANDB_RUN_ID_FILE).read_text() == run_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def read_steps(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # skip a torn last line


@pytest.mark.slow
def test_a_job_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    every_n = 3
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def command(steps_file: str, *overrides: str) -> list[str]:
        return [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "debug=tiny",
            "trainer=cpu",
            "logger=wandb",
            "loss.perceptual.kind=none",
            "evaluate.enabled=false",
            "evaluate.export=false",
            f"callbacks.model_checkpoint.every_n_train_steps={every_n}",
            f"hydra.run.dir={run_dir}",
            "+callbacks.steps._target_=tests.test_resume.StepRecorder",
            f"+callbacks.steps.path={run_dir / steps_file}",
            *overrides,
        ]

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    job = subprocess.Popen(
        command("steps_killed.jsonl", "trainer.max_steps=1000"),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # kill mid-way between two checkpoints, once two checkpoints exist
        while len(read_steps(run_dir / "steps_killed.jsonl")) < 2 * every_n + 2:
            assert job.poll() is None, job.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGKILL)  # the job and anything it started (W&B service)
        job.wait()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == -signal.SIGKILL

    killed = read_steps(run_dir / "steps_killed.jsonl")
    done = killed[-1]["step"]
    saved = checkpoint(run_dir)["global_step"]
    progress = f"killed after step {done}, last checkpoint at step {saved}"
    assert saved % every_n == 0, progress
    assert 0 <= done - saved <= every_n, progress  # lost at most the steps since the checkpoint
    run_id = (run_dir / train_task.WANDB_RUN_ID_FILE).read_text()

    resumed = subprocess.run(
        command("steps_resumed.jsonl", "ckpt_path=last", f"trainer.max_steps={saved + 2}"),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = read_steps(run_dir / "steps_resumed.jsonl")
    assert [s["step"] for s in steps] == [saved + 1, saved + 2], progress
    by_step = {s["step"]: s for s in killed}
    for step in steps:
        if step["step"] in by_step:  # the killed job got there too: the same pairs and loss
            assert step["index"] == by_step[step["step"]]["index"]
            assert step["loss"] == pytest.approx(by_step[step["step"]]["loss"], rel=1e-5), progress
    assert checkpoint(run_dir)["global_step"] == saved + 2
    assert (run_dir / train_task.WANDB_RUN_ID_FILE).read_text() == run_id


def test_ckpt_path_last_in_a_sweep_job_only_resumes_its_own_folder(tmp_path):
    other_run = tmp_path / "logs" / "debug" / "runs" / "another_experiment" / "checkpoints"
    other_run.mkdir(parents=True)
    (other_run / "last.ckpt").write_bytes(b"not this one")
    overrides = [
        "debug=tiny",
        "ckpt_path=last",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    # a single run falls back to the newest run of the task ...
    single = tmp_path / "single"
    cfg = config.compose_config("train", overrides, single)
    assert train_task.resume_checkpoint(cfg, single) == str(other_run / "last.ckpt")
    # ... a sweep job (its folder inside hydra.sweep.dir) starts fresh, then resumes its own
    job_dir = tmp_path / "sweep" / "0"
    cfg = config.compose_config("train", overrides, job_dir)
    assert train_task.resume_checkpoint(cfg, job_dir) is None
    (job_dir / "checkpoints").mkdir()
    (job_dir / "checkpoints" / "last.ckpt").write_bytes(b"this one")
    assert train_task.resume_checkpoint(cfg, job_dir) == str(job_dir / "checkpoints" / "last.ckpt")


# --------------------------------------------------------------------------------------------
# the README's resume command continues the run's own experiment
def run_train_py(*words: str) -> None:
    """`python train.py <words>` in this process (Hydra's main, argument rewrite included)."""
    argv = sys.argv
    sys.argv = [str(REPO_ROOT / "train.py"), *words]
    try:
        runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
    except SystemExit as stop:  # Hydra exits 1 after printing a failed job's error
        raise AssertionError(f"train.py {' '.join(words)} exited with {stop.code}") from None
    finally:
        sys.argv = argv


def readme_resume_words(run_dir: Path) -> list[str]:
    """The README's resume command (section 'Scale out'), its run folder replaced by `run_dir`."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if "ckpt_path=last" in line]
    command = next(line for line in lines if line.startswith("python train.py hydra.run.dir="))
    words = command.split("#", 1)[0].split()[2:]
    return [
        f"hydra.run.dir={run_dir}" if word.startswith("hydra.run.dir=") else word for word in words
    ]


def test_readme_resume_command_continues_the_runs_own_experiment(tmp_path):
    run_dir = tmp_path / "run"
    started = ["experiment=demo", "debug=tiny", "logger=csv", "evaluate.enabled=false"]
    run_train_py(*started, "evaluate.export=false", f"hydra.run.dir={run_dir}")
    first = checkpoint(run_dir)
    assert first["global_step"] == 4

    # typed as the README shows it, plus a longer budget: no experiment retyped
    typed = readme_resume_words(run_dir)
    assert typed == [f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    run_train_py(*typed, "trainer.max_steps=6")
    final = checkpoint(run_dir)
    assert final["global_step"] == 6  # the demo's U-Net loaded and trained on (no size mismatch)
    position = first["OnTheFlyDataModule"]["next_position"]
    assert final["OnTheFlyDataModule"]["next_position"] > position  # the next unseen pairs
    assert final["hyper_parameters"]["net_config"]["stem_stride"] == 1  # demo's net, not default
    recorded = resume.saved_run_overrides(run_dir)  # Hydra's record: the run's + the new ones
    assert recorded == [*started, "evaluate.export=false", "ckpt_path=last", "trainer.max_steps=6"]
    assert final[resume.OVERRIDES_KEY] == recorded


def test_a_checkpoint_that_does_not_fit_the_model_is_one_error_naming_keys_and_overrides(
    tmp_path,
):
    run_dir = tmp_path / "run"
    run_train_py(
        "experiment=demo",
        "debug=tiny",
        "logger=csv",
        "evaluate.enabled=false",
        "evaluate.export=false",
        f"hydra.run.dir={run_dir}",
    )
    # composed without the run's overrides (in-process, no argument rewrite): the default U-Net
    cfg = config.compose_config(
        "train", ["debug=tiny", "logger=csv", f"ckpt_path={run_dir}"], tmp_path / "other"
    )
    with pytest.raises(config.ConfigError) as error:
        train_task.train(cfg)
    message = str(error.value)
    assert "does not fit the StylizerModule" in message
    assert "missing keys" in message and "net.encoder.4.0.weight" in message  # weights named
    assert "net_config.stem_stride: 1 vs 2" in message  # the model settings that differ
    assert "the run's overrides (recorded in the checkpoint): experiment=demo debug=tiny" in message
    assert f"this config's overrides: debug=tiny logger=csv ckpt_path={run_dir}" in message


def test_resume_arguments_put_the_runs_overrides_under_the_new_ones(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- experiment=demo\n- trainer.max_steps=4\n- +callbacks.extra.every=2\n- ckpt_path=null\n"
    )
    resume_words = [f"hydra.run.dir={run_dir}", "ckpt_path=last", "trainer.max_steps=9"]
    assert resume.resume_arguments(resume_words) == [
        "experiment=demo",
        "+callbacks.extra.every=2",
        *resume_words,
        "hydra.mode=RUN",
    ]
    # a key the run added stays an addition; flags pass through
    assert resume.resume_arguments(["--cfg", "job", *resume_words, "callbacks.extra.every=3"]) == [
        "--cfg",
        "job",
        "experiment=demo",
        *resume_words,
        "+callbacks.extra.every=3",
        "hydra.mode=RUN",
    ]
    # ckpt_path naming the run folder or its checkpoint file: the same run's overrides
    for ckpt in (run_dir, run_dir / "checkpoints" / "last.ckpt"):
        assert resume.resume_arguments([f"ckpt_path={ckpt}"])[0] == "experiment=demo"
    # fresh runs, multirun and folders without a Hydra record are left as typed
    for words in (
        [f"hydra.run.dir={run_dir}", "experiment=demo"],
        ["-m", *resume_words],
        [f"hydra.run.dir={tmp_path}", "ckpt_path=last"],
    ):
        assert resume.resume_arguments(words) == words


def test_resuming_an_optuna_trial_is_one_run_not_a_new_study(tmp_path):
    """A trial's saved overrides carry `hparams_search=optuna`, whose config says
    `hydra.mode: MULTIRUN`: the resume forces a single run (as the process launcher starts
    every trial), unless the user typed a mode."""
    trial = tmp_path / "multiruns" / "study" / "3"
    (trial / ".hydra").mkdir(parents=True)
    (trial / ".hydra" / "overrides.yaml").write_text(
        "- hparams_search=optuna\n- experiment=webtoonme_512\n- model.optim.lr=0.0003\n"
    )
    words = resume.resume_arguments([f"hydra.run.dir={trial}", "ckpt_path=last"])
    assert words[0] == "hparams_search=optuna" and "model.optim.lr=0.0003" in words
    assert words[-1] == "hydra.mode=RUN"
    assert words.count("hydra.mode=RUN") == 1
    typed = resume.resume_arguments([f"hydra.run.dir={trial}", "ckpt_path=last", "hydra.mode=RUN"])
    assert typed.count("hydra.mode=RUN") == 1
    # the search config really asks for a sweep: what the override undoes
    search = config.OmegaConf.load(config.CONF_DIR / "hparams_search" / "optuna.yaml")
    assert search.hydra.mode == "MULTIRUN"


class TinyModule(torch.nn.Module):
    """What `check_checkpoint_fits` reads of a LightningModule: its weights and hparams."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, 2)
        self.hparams = {"width": width}


def test_the_checkpoint_check_compares_shapes_without_loading_into_the_model(tmp_path):
    """Lightning loads the checkpoint in `fit`: the check must not load it a second time."""
    model = TinyModule()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = TinyModule()
    torch.nn.init.constant_(other.layer.weight, 7.0)
    path = tmp_path / "fits.ckpt"
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": {"width": 3}}, path)
    model.load_state_dict = None  # any load attempt fails loudly
    resume.check_checkpoint_fits(model, str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    wide = tmp_path / "wide.ckpt"
    torch.save({"state_dict": TinyModule(5).state_dict(), "hyper_parameters": {"width": 5}}, wide)
    with pytest.raises(config.ConfigError, match=r"(?s)shape mismatches \(1\).*width: 5 vs 3"):
        resume.check_checkpoint_fits(model, str(wide))
