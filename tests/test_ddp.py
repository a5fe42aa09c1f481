"""DDP on CPU (gloo, 2 processes): ranks train on disjoint pairs whose union is the
single-process stream with twice the batch, and F, D and F_ema stay identical across ranks.

The 2-process runs are the jobs of one 2-job multirun (`run_ddp_sweep`, shared with
test_multirun.py so the expensive processes start once per test session): through
hydra/launcher=process every job is a plain single run, exactly as `python train.py
trainer=ddp_cpu` would be. `RecordRankState` is a test-only Lightning callback that the jobs
load by its dotted path (`+callbacks.rank_state._target_=tests.test_ddp.RecordRankState`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # debug=tiny: trainer.max_steps
BATCH = 2  # debug=tiny: data.batch_size per rank
WORLD = 2  # trainer=ddp_cpu: devices


# --------------------------------------------------------------------------------------------
# test-only callback, loaded inside the training processes
def state_digests(module: torch.nn.Module) -> dict[str, str]:
    """sha1 of every parameter and buffer of F, D and F_ema (bitwise identity across ranks)."""
    digests = {}
    for prefix in ("net", "discriminator", "net_ema"):
        part = getattr(module, prefix, None)
        if part is None:
            continue
        for name, tensor in part.state_dict().items():
            data = tensor.detach().cpu().contiguous().numpy().tobytes()
            digests[f"{prefix}.{name}"] = hashlib.sha1(data).hexdigest()
    return digests


class RecordRankState(pl.Callback):
    """Writes `<dirname>/rank<R>.json`: the pair indices of each training step on this rank and
    digests of F, D and F_ema at the start and end of training."""

    def __init__(self, dirname: str) -> None:
        self.dirname = Path(dirname)
        self.indices: list[list[int]] = []
        self.start: dict[str, str] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = state_digests(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.indices.append([int(i) for i in batch["index"].tolist()])

    # on_fit_end: after the module's own on_train_end (which syncs batch-norm buffers)
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "indices": self.indices,
            "start": self.start,
            "end": state_digests(pl_module),
        }
        self.dirname.mkdir(parents=True, exist_ok=True)
        path = self.dirname / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# the shared 2-job x 2-process sweep
@dataclass
class SweepRun:
    root: Path  # PROJECT_ROOT of the sweep (logs/ below it)
    process: subprocess.CompletedProcess
    wall_s: float
    cpu_s: float  # user + system of the sweep and every process it waited for

    @property
    def multiruns(self) -> list[Path]:
        return sorted((self.root / "logs" / "debug" / "multiruns").glob("*"))

    @property
    def job_dirs(self) -> list[Path]:
        return sorted(p for p in self.multiruns[0].iterdir() if p.is_dir())


_SWEEPS: dict[str, SweepRun] = {}


def run_ddp_sweep(root: Path) -> SweepRun:
    """`python train.py -m debug=tiny trainer=ddp_cpu logger=wandb seed=1,2`, both jobs at once.

    Run once per session (cached here): test_ddp.py and test_multirun.py inspect the same run.
    """
    if "sweep" in _SWEEPS:
        return _SWEEPS["sweep"]
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "debug=tiny",
        "trainer=ddp_cpu",
        "logger=wandb",
        "seed=1,2",
        "loss.perceptual.kind=none",  # VGG16: most of a CPU step, nothing to do with DDP
        "hydra/launcher=process",
        "hydra.launcher.n_jobs=2",
        "hydra.launcher.timeout_min=10",  # a hang fails the test instead of blocking the suite
        "+optimized_metric=l1_output_target",
        "+callbacks.rank_state._target_=tests.test_ddp.RecordRankState",
        "+callbacks.rank_state.dirname=${paths.output_dir}/rank_state",
    ]
    env = {
        **os.environ,
        "PROJECT_ROOT": str(root),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        pytest.fail(
            f"the sweep failed ({process.returncode}):\n{process.stdout[-3000:]}"
            f"\n{process.stderr[-6000:]}"
        )
    _SWEEPS["sweep"] = SweepRun(root, process, wall, cpu)
    print(f"\n2-job x 2-process DDP sweep: {wall:.1f} s wall, {cpu:.1f} s CPU")  # noqa: T201
    return _SWEEPS["sweep"]


@pytest.fixture(scope="session")
def ddp_sweep(tmp_path_factory) -> SweepRun:
    return run_ddp_sweep(tmp_path_factory.mktemp("ddp_sweep"))


def rank_records(job_dir: Path) -> list[dict]:
    return [
        json.loads((job_dir / "rank_state" / f"rank{rank}.json").read_text())
        for rank in range(WORLD)
    ]


# --------------------------------------------------------------------------------------------
def test_each_job_trained_on_two_processes(ddp_sweep):
    for job_dir in ddp_sweep.job_dirs:
        records = rank_records(job_dir)
        assert [r["rank"] for r in records] == [0, 1]
        assert all(r["world_size"] == WORLD and r["global_step"] == STEPS for r in records)
        assert all(len(r["indices"]) == STEPS for r in records)


def test_ranks_see_disjoint_pairs_whose_union_is_the_single_process_stream(
    ddp_sweep, tmp_path, monkeypatch
):
    from portrait_toon import config
    from portrait_toon.tasks import train as train_task

    rank0, rank1 = rank_records(ddp_sweep.job_dirs[0])
    for step in range(STEPS):
        first, second = set(rank0["indices"][step]), set(rank1["indices"][step])
        assert len(first) == len(second) == BATCH
        assert not first & second  # no pair twice in a step
    seen = [i for record in (rank0, rank1) for batch in record["indices"] for i in batch]
    assert len(seen) == len(set(seen))  # and no pair twice in the whole run

    # one process, batch 2 x 2, same stream: the same pairs at every step
    recorder = RecordRankState(str(tmp_path / "single"))
    build = train_task.build_callbacks
    monkeypatch.setattr(
        train_task, "build_callbacks", lambda cfg, have_logger: [*build(cfg, have_logger), recorder]
    )
    cfg = config.compose_config(
        "train",
        [
            "debug=tiny",
            "trainer=cpu",
            f"data.batch_size={WORLD * BATCH}",
            "logger=none",
            "loss.perceptual.kind=none",
            "evaluate.enabled=false",
            "evaluate.export=false",
        ],
        tmp_path,
    )
    train_task.train(cfg)
    assert len(recorder.indices) == STEPS
    for step in range(STEPS):
        union = set(rank0["indices"][step]) | set(rank1["indices"][step])
        assert union == set(recorder.indices[step])


def test_f_d_and_ema_are_identical_on_both_ranks_and_trained(ddp_sweep):
    rank0, rank1 = rank_records(ddp_sweep.job_dirs[0])
    assert rank0["end"].keys() == rank1["end"].keys()
    assert any(k.startswith("discriminator.") for k in rank0["end"])  # D is in the comparison
    assert rank0["end"] == rank1["end"]  # gradients all-reduced: bitwise the same weights
    for prefix in ("net.", "discriminator.", "net_ema."):  # and they did train (GAN on at step 3)
        changed = [
            k for k in rank0["end"] if k.startswith(prefix) and rank0["end"][k] != rank0["start"][k]
        ]
        assert changed, f"no {prefix} tensor changed during training"


def test_checkpoint_stream_position_counts_both_ranks(ddp_sweep):
    checkpoint = torch.load(
        ddp_sweep.job_dirs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["global_step"] == STEPS
    # 4 steps x 2 ranks x 2 pairs consumed: a resume continues at pair 16
    assert checkpoint["OnTheFlyDataModule"] == {"next_position": STEPS * WORLD * BATCH}
