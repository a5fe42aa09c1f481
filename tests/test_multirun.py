"""hydra/launcher=process: every multirun job is a fresh single-run process in its own folder.

The DDP sweep of test_ddp.py (2 jobs x 2 gloo processes, W&B offline) gives: one sweep
folder, one folder per job and no other, a finished checkpoint per job, one offline W&B run per
job (different ids, grouped by the sweep, config/tags/images in it) and the task's return value
handed back. A tiny Hydra app (no torch, ~1 s a sweep) checks failures, SIGKILL, timeouts,
odd paths and the clear error of hydra/launcher=slurm without its extra.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_ddp import REPO_ROOT, STEPS, SweepRun, run_ddp_sweep

from hydra_plugins.portrait_toon_launcher.process_launcher import (
    JOB_OUTPUT_FILE,
    JOB_RETURN_FILE,
    quote_override_value,
)


@pytest.fixture(scope="session")
def ddp_sweep(tmp_path_factory) -> SweepRun:
    return run_ddp_sweep(tmp_path_factory.mktemp("ddp_sweep"))


# --------------------------------------------------------------------------------------------
# W&B offline run files (LevelDB-log records of wandb_internal_pb2.Record)
def read_wandb_records(run_file: Path) -> list:
    """Every record of an offline `run-<id>.wandb` file (header, then 32 KiB blocks of
    chunks: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    block, position, pending, payloads = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------
# the DDP sweep
def test_one_sweep_folder_with_exactly_one_folder_per_job(ddp_sweep):
    logs = ddp_sweep.root / "logs"
    assert len(ddp_sweep.multiruns) == 1  # no duplicate sweep started by a DDP rank
    assert not (logs / "debug" / "runs").exists()  # nor stray single-run folders
    sweep_dir = ddp_sweep.multiruns[0]
    assert [p.name for p in ddp_sweep.job_dirs] == ["0", "1"]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
    for seed, job_dir in zip((1, 2), ddp_sweep.job_dirs, strict=True):
        job_config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert job_config.seed == seed
        assert job_config.trainer.devices == 2
        hydra_config = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml")
        assert hydra_config.hydra.runtime.output_dir == str(job_dir)
        assert (job_dir / JOB_OUTPUT_FILE).is_file()  # n_jobs=2: output to files, not mixed


def test_every_job_finished_its_checkpoint_and_returned_its_metric(ddp_sweep):
    for job_dir in ddp_sweep.job_dirs:
        checkpoint = torch.load(
            job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        assert checkpoint["global_step"] == STEPS
        metrics = json.loads((job_dir / "metrics.json").read_text())
        job_return = json.loads((job_dir / JOB_RETURN_FILE).read_text())
        # what a sweeper (Optuna) would optimise: optimized_metric of the held-out metrics
        assert job_return == {"status": "COMPLETED", "return_value": metrics["l1_output_target"]}


def test_every_job_has_its_own_wandb_run_grouped_by_the_sweep(ddp_sweep):
    sweep_name = ddp_sweep.multiruns[0].name
    run_ids = []
    for seed, job_dir in zip((1, 2), ddp_sweep.job_dirs, strict=True):
        run_id = (job_dir / "wandb_run_id.txt").read_text().strip()
        offline_runs = list((job_dir / "wandb").glob("offline-run-*"))
        assert [p.name.rsplit("-", 1)[-1] for p in offline_runs] == [run_id]  # one run, this id
        records = read_wandb_records(offline_runs[0] / f"run-{run_id}.wandb")
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_id == run_id
        assert run.run_group == sweep_name
        assert list(run.tags) == ["debug"]  # tags from the config
        config = {
            item.key: json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "config"
            for item in r.config.update
        }
        assert config["seed"] == seed and config["trainer"]["devices"] == 2  # resolved config
        logged = {
            item.key or "/".join(item.nested_key)
            for r in records
            if r.WhichOneof("record_type") == "history"
            for item in r.history.item
        }
        assert "heldout/l1_output_target" in logged
        for image in ("samples", "heldout/demo_report"):  # images: {image}/format, /filenames..
            assert f"{image}/filenames" in logged
        assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished
        run_ids.append(run_id)
    assert len(set(run_ids)) == 2


# --------------------------------------------------------------------------------------------
# a tiny Hydra app: launcher behaviour without torch
APP = """
import json, os, signal, sys, time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(config_path=".", config_name="app", version_base="1.3")
def main(cfg):
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    seen = {"x": cfg.x, "mode": hydra_cfg.mode.name, "sweep_dir": hydra_cfg.sweep.dir,
            "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}
    (out / "seen.json").write_text(json.dumps(seen))
    if cfg.x == cfg.fail_at:
        raise ValueError(f"bad x={cfg.x}")
    if cfg.x == cfg.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.x == cfg.sleep_at:
        time.sleep(120)
    return cfg.x * 10


if __name__ == "__main__":
    main()
"""

APP_CONFIG = """
defaults:
  - override hydra/launcher: process
  - _self_
x: 0
fail_at: -1
kill_at: -1
sleep_at: -1
hydra:
  searchpath: [file://{conf}]
  run:
    dir: ${{oc.env:APP_ROOT}}/single_run
  sweep:
    dir: ${{oc.env:APP_ROOT}}/sweep
    subdir: ${{hydra.job.num}}
"""


# like conf/hparams_search/optuna.yaml: a config file that turns multirun mode on
FORCE_MULTIRUN = """
# @package _global_
hydra:
  mode: MULTIRUN
"""


def run_app(
    root: Path, *overrides: str, multirun_flag: bool = True, **env_vars: str
) -> subprocess.CompletedProcess:
    app_dir = root / "app"
    (app_dir / "search").mkdir(parents=True, exist_ok=True)
    (app_dir / "app.py").write_text(textwrap.dedent(APP))
    (app_dir / "app.yaml").write_text(APP_CONFIG.format(conf=REPO_ROOT / "conf"))
    (app_dir / "search" / "force_multirun.yaml").write_text(FORCE_MULTIRUN)
    env = {**os.environ, "APP_ROOT": str(root), "HYDRA_FULL_ERROR": "1", **env_vars}
    flag = ["-m"] if multirun_flag else []
    return subprocess.run(
        [sys.executable, str(app_dir / "app.py"), *flag, *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def job_record(root: Path, num: int, name: str) -> dict:
    return json.loads((root / "sweep" / str(num) / name).read_text())


def test_jobs_run_as_single_runs_in_their_folders_and_return_values(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    root = tmp_path / "a dir, with=odd 'chars'"  # quoted into hydra.run.dir correctly
    result = run_app(root, "x=1,2,3", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr
    for num, x in enumerate((1, 2, 3)):
        seen = job_record(root, num, "seen.json")
        assert seen["x"] == x and seen["mode"] == "RUN"  # a plain single run ...
        # ... with its share of the CPUs: two concurrent jobs split them
        assert seen["omp"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
        assert Path(seen["sweep_dir"]) == (root / "sweep").resolve()  # ... that knows its sweep
        assert job_record(root, num, JOB_RETURN_FILE) == {
            "status": "COMPLETED",
            "return_value": x * 10,
        }
    assert sorted(p.name for p in (root / "sweep").iterdir()) == ["0", "1", "2", "multirun.yaml"]
    assert not (root / "single_run").exists()


def test_a_config_that_forces_multirun_mode_does_not_make_jobs_sweep_again(tmp_path):
    # without hydra.mode=RUN on the job's command line every job would start the sweep anew
    result = run_app(tmp_path, "+search=force_multirun", "x=1,2", multirun_flag=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0", "1", "multirun.yaml"]
    for num, x in enumerate((1, 2)):
        assert job_record(tmp_path, num, "seen.json")["mode"] == "RUN"
        assert job_record(tmp_path, num, JOB_RETURN_FILE)["return_value"] == x * 10


def test_threads_per_job_sets_each_jobs_cpu_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the option wins over the environment
    result = run_app(tmp_path, "x=1", "hydra.launcher.threads_per_job=1")
    assert result.returncode == 0, result.stderr
    assert job_record(tmp_path, 0, "seen.json")["omp"] == "1"
    # one job at a time: the environment's value is passed on as it is
    result = run_app(tmp_path / "again", "x=1")
    assert result.returncode == 0, result.stderr
    assert job_record(tmp_path / "again", 0, "seen.json")["omp"] == "7"


def test_a_job_never_launches_a_sweep_of_its_own(tmp_path):
    result = run_app(tmp_path, "x=1,2", PORTRAIT_TOON_LAUNCHER_JOB="0 of /elsewhere")
    assert result.returncode != 0
    assert "would start a sweep of its own" in result.stderr
    assert not (tmp_path / "sweep" / "0").exists()


def test_a_failing_job_fails_the_sweep_naming_the_job_after_all_jobs_ran(tmp_path):
    result = run_app(tmp_path, "x=1,2,3", "fail_at=2")
    assert result.returncode != 0
    assert "job #1 (x=2 fail_at=2) failed" in result.stderr
    assert "ValueError: bad x=2" in result.stderr
    assert str((tmp_path / "sweep" / "1").resolve()) in result.stderr  # where its log is
    assert job_record(tmp_path, 2, JOB_RETURN_FILE)["return_value"] == 30  # the rest ran


def test_a_killed_job_is_reported_as_killed(tmp_path):
    result = run_app(tmp_path, "x=1,2", "kill_at=1")
    assert result.returncode != 0
    assert "job #0 (x=1 kill_at=1) failed" in result.stderr
    assert "killed by SIGKILL" in result.stderr
    assert not (tmp_path / "sweep" / "0" / JOB_RETURN_FILE).exists()
    assert job_record(tmp_path, 1, JOB_RETURN_FILE)["return_value"] == 20


def test_a_job_past_its_timeout_is_stopped(tmp_path):
    result = run_app(tmp_path, "x=1", "sleep_at=1", "hydra.launcher.timeout_min=0.05")
    assert result.returncode != 0
    assert "stopped: timeout (0.05 min)" in result.stderr


def test_ctrl_c_on_the_sweep_stops_its_running_jobs(tmp_path):
    run_app(tmp_path, "x=0")  # writes the app; its one quick job is not what is tested here
    env = {**os.environ, "APP_ROOT": str(tmp_path / "interrupted")}
    sweep = subprocess.Popen(
        [sys.executable, str(tmp_path / "app" / "app.py"), "-m", "x=1,2", "sleep_at=1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_file = tmp_path / "interrupted" / "sweep" / "0" / "seen.json"
    deadline = time.monotonic() + 120
    while not seen_file.is_file():  # job #0 is asleep in its task function
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    job_pid = json.loads(seen_file.read_text())["pid"]
    sweep.send_signal(signal.SIGINT)
    try:  # communicate, not wait: the sweep and its job share the stderr pipe, which must drain
        _, stderr = sweep.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        sweep.kill()
        _, stderr = sweep.communicate()
        pytest.fail(f"the sweep outlived Ctrl-C by 120 s; its stderr ends:\n{stderr[-4000:]}")
    assert sweep.returncode != 0, stderr[-2000:]
    with pytest.raises(ProcessLookupError):
        os.kill(job_pid, 0)  # the job went with the sweep
    assert not (tmp_path / "interrupted" / "sweep" / "1").exists()  # and no new job started


def test_two_runs_started_in_the_same_second_get_different_folders(tmp_path):
    # the run folder is <time to the second>_<token>: the token is random per process
    script = (
        "from portrait_toon import config\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        "config.compose_config('train', ['debug=tiny'])\n"
        "print(config.run_token(), HydraConfig.get().runtime.output_dir)\n"
    )
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path)}
    starts = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0].split() for process in starts]
    (token_a, dir_a), (token_b, dir_b) = outputs
    assert token_a != token_b and dir_a != dir_b
    assert dir_a.endswith(f"_{token_a}") and dir_b.endswith(f"_{token_b}")
    assert Path(dir_a).parent == tmp_path / "logs" / "debug" / "runs"


def test_quoted_override_values_read_back_literally():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in ("/a b/c,d=e", "it's", "x\\", "$HOME/${not_an.interpolation}", "a\\'b"):
        override = parser.parse_override(f"key={quote_override_value(value)}")
        # as the config reads it (OmegaConf turns an escaped \${ into a literal ${)
        assert OmegaConf.create({"key": override.value()}).key == value


def test_slurm_without_its_extra_is_a_clear_error():
    from hydra_plugins.portrait_toon_launcher import slurm_launcher

    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("hydra-submitit-launcher is installed here")
    with pytest.raises(
        slurm_launcher.SlurmLauncherMissingError, match=r"pip install -e '\.\[slurm\]'"
    ):
        slurm_launcher.SlurmLauncher(partition="gpu")
