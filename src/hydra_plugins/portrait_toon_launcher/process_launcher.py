"""`hydra/launcher=process`: every job of a multirun runs as its own fresh process.

Each job is started as the plain single run a user would type,

    python <entry script> <job overrides> hydra.run.dir=<sweep dir>/<subdir> ...

so whatever the job does inside (Lightning DDP re-launching the script once per rank, CUDA,
W&B) sees one ordinary run: no rank re-runs the sweep, every job gets a fresh process (clean
CUDA context, its own W&B run, its own process group) and its own folder. Jobs run one after
the other, or `n_jobs` at a time (optionally each on its own GPUs via CUDA_VISIBLE_DEVICES).

The job process reports its task function's return value (what a sweeper such as Optuna
optimises) through a small Hydra callback that the launcher adds to the job's command line:
it writes `<job dir>/job_return.json`. A job that crashes, is killed or runs past its timeout
comes back as a FAILED JobReturn naming its exit status and folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

JOB_RETURN_FILE = "job_return.json"
"""Written into each job's folder by the job itself: status and the task's return value."""
JOB_OUTPUT_FILE = "job_output.log"
"""The job's stdout and stderr when they go to a file (`output=file`, or `auto` with n_jobs>1)."""

OUTPUT_MODES = ("auto", "terminal", "file")

# Rendezvous variables of a surrounding torch.distributed launch: each job must start its own
# process group (and, run concurrently, pick its own free MASTER_PORT), never join another's.
_DISTRIBUTED_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)
# Hydra overrides of the multirun command that the launcher sets itself per job, or that mean
# nothing to a single run (which launcher/sweeper the parent used, multirun mode).
_REPLACED_HYDRA_KEYS = (
    "hydra.run.dir",
    "hydra.sweep.dir",
    "hydra.sweep.subdir",
    "hydra.job.num",
    "hydra.job.id",
    "hydra.mode",
    "hydra/launcher",
    "hydra.launcher",
    "hydra/sweeper",
    "hydra.sweeper",
)
_CALLBACK_NAME = "portrait_toon_job_return"
# Set in every job's environment: a job that would launch a sweep itself (a config with
# `hydra.mode: MULTIRUN`) is stopped instead of forking sweeps recursively.
JOB_ENV_MARKER = "PORTRAIT_TOON_LAUNCHER_JOB"
# After SIGINT/SIGTERM, how long a job's processes get to shut down before SIGKILL.
_STOP_GRACE_S = 30.0
_POLL_S = 0.2


class JobFailedError(RuntimeError):
    """A job of the sweep failed; the message names its overrides, exit status and folder."""


# ------------------------------------------------------------------------------------------
# inside the job process
class JobReturnWriter(Callback):
    """Hydra callback run in the job: writes `<job dir>/job_return.json` when the job ends.

    Only the process the launcher started writes: ranks that the job spawns itself (Lightning
    re-runs the same command line once per extra DDP rank) have another parent process.
    """

    def __init__(self, launcher_pid: int) -> None:
        self.launcher_pid = int(launcher_pid)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if os.getppid() != self.launcher_pid:
            return
        record: dict[str, Any] = {"status": job_return.status.name}
        if job_return.status is JobStatus.COMPLETED:
            record["return_value"] = _jsonable(job_return._return_value)
        else:
            error = job_return._return_value
            record["error"] = f"{type(error).__name__}: {error}"
        output_dir = Path(str(config.hydra.runtime.output_dir))
        _write_json_atomic(output_dir / JOB_RETURN_FILE, record)


def _jsonable(value: Any) -> Any:
    """The return value as JSON (floats, ints, strings, lists, dicts); numpy/torch scalars via
    `.item()`; anything else as its repr (a sweeper can only use numbers anyway)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    if OmegaConf.is_config(value):
        return _jsonable(OmegaConf.to_container(value, resolve=True))
    return repr(value)


def _write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # NaN/inf are legal returns (a diverged trial); Python's json reads them back
    temporary.write_text(json.dumps(record, allow_nan=True), encoding="utf-8")
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------
# in the multirun process
def quote_override_value(value: str) -> str:
    """`value` as one literal Hydra override value (paths with spaces, commas, `=`, `$`)."""
    escaped = value.replace("\\'", "\\\\'").replace("'", "\\'").replace("${", "\\${")
    # a backslash right before the closing quote would escape it
    trailing = len(escaped) - len(escaped.rstrip("\\"))
    return "'" + escaped + "\\" * trailing + "'"


def entry_command(launch_dir: str | os.PathLike[str]) -> list[str]:
    """How this Python process was started: `[python, script]` or `[python, -m, module]`."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name]
    return [sys.executable, str((Path(launch_dir) / sys.argv[0]).resolve())]


def _override_key(override: str, parser: OverridesParser) -> str:
    try:
        return str(parser.parse_override(override).key_or_group)
    except Exception:  # noqa: BLE001 - keep an override we cannot parse rather than drop it
        return override.split("=", 1)[0].lstrip("+~")


def _is_replaced(key: str) -> bool:
    return any(key == k or key.startswith((k + ".", k + "/")) for k in _REPLACED_HYDRA_KEYS)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Job:
    """One job of the sweep and, once started, its process.

    (A plain class: Hydra's plugin scan executes this module before registering it in
    sys.modules, which @dataclass with postponed annotations cannot handle.)
    """

    def __init__(
        self, num: int, overrides: list[str], config: DictConfig, job_dir: Path, command: list[str]
    ) -> None:
        self.num = num
        self.overrides = overrides
        self.config = config
        self.job_dir = job_dir
        self.command = command
        self.process: subprocess.Popen | None = None
        self.output: IO[bytes] | None = None
        self.started = 0.0
        self.slot = 0
        self.stop_reason: str | None = None
        self.stop_sent: float | None = None


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ProcessLauncher(Launcher):
    """Runs each job of a sweep as `python <entry> <overrides> hydra.run.dir=<job dir>`.

    Args:
        n_jobs: jobs running at the same time (1: one after the other).
        output: where a job's stdout/stderr go: `terminal`, `file` (`<job dir>/job_output.log`)
            or `auto` (file when n_jobs > 1, so concurrent progress bars do not interleave).
        gpus_per_job: give each running job its own GPUs through CUDA_VISIBLE_DEVICES (taken in
            order from the visible ones); null: every job sees every GPU.
        timeout_min: wall-clock limit of one job; a job past it is stopped (SIGTERM, then
            SIGKILL) and returned as failed. null: no limit.
        threads_per_job: OMP_NUM_THREADS of each job (torch's CPU threads). null: the CPUs
            this process may use split between the n_jobs running jobs when n_jobs > 1 (so
            concurrent CPU jobs do not each start a thread per core and thrash), unless
            OMP_NUM_THREADS is already set; nothing is set for n_jobs = 1. A job that runs
            k DDP ranks on CPU wants its share divided by k (Lightning splits the cores
            between ranks itself only when OMP_NUM_THREADS is unset).
    """

    def __init__(
        self,
        n_jobs: int = 1,
        output: str = "auto",
        gpus_per_job: int | None = None,
        timeout_min: float | None = None,
        threads_per_job: int | None = None,
    ) -> None:
        super().__init__()
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be >= 1, got {n_jobs}")
        if output not in OUTPUT_MODES:
            raise ValueError(
                f"hydra.launcher.output={output!r} is not one of {', '.join(OUTPUT_MODES)}"
            )
        if gpus_per_job is not None and int(gpus_per_job) < 1:
            raise ValueError(
                f"hydra.launcher.gpus_per_job must be >= 1 or null, got {gpus_per_job}"
            )
        if timeout_min is not None and not float(timeout_min) > 0:
            raise ValueError(f"hydra.launcher.timeout_min must be > 0 or null, got {timeout_min}")
        if threads_per_job is not None and int(threads_per_job) < 1:
            raise ValueError(
                f"hydra.launcher.threads_per_job must be >= 1 or null, got {threads_per_job}"
            )
        self.n_jobs = int(n_jobs)
        self.threads_per_job = None if threads_per_job is None else int(threads_per_job)
        self.output = output
        self.gpus_per_job = None if gpus_per_job is None else int(gpus_per_job)
        self.timeout_s = None if timeout_min is None else float(timeout_min) * 60.0
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function  # runs in the job processes, never here

    # -------------------------------------------------------------------------------- launch
    def launch(self, job_overrides: list[list[str]] | Any, initial_job_idx: int) -> list[JobReturn]:
        if os.environ.get(JOB_ENV_MARKER):
            raise RuntimeError(
                f"this process is job {os.environ[JOB_ENV_MARKER]} of a hydra/launcher=process "
                "sweep and would start a sweep of its own; jobs always run as single runs "
                "(is hydra.mode=MULTIRUN forced somewhere the job also reads?)"
            )
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = self._gpu_slots()
        jobs = [
            self._prepare(initial_job_idx + offset, list(overrides))
            for offset, overrides in enumerate(job_overrides)
        ]
        log.info(
            "Launching %d job(s), each in its own process, %d at a time; sweep folder %s",
            len(jobs),
            self.n_jobs,
            sweep_dir,
        )
        return self._run(jobs, slots)

    def _gpu_slots(self) -> list[str | None]:
        """CUDA_VISIBLE_DEVICES of each of the n_jobs concurrent slots (None: unchanged)."""
        if self.gpus_per_job is None:
            return [None] * self.n_jobs
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            pool = [device.strip() for device in visible.split(",") if device.strip()]
        else:
            import torch  # only when GPUs are split: keeps plain sweeps' start-up light

            pool = [str(index) for index in range(torch.cuda.device_count())]
        needed = self.n_jobs * self.gpus_per_job
        if len(pool) < needed:
            raise ValueError(
                f"hydra.launcher: n_jobs={self.n_jobs} x gpus_per_job={self.gpus_per_job} needs "
                f"{needed} GPUs, {len(pool)} are visible ({pool}); lower n_jobs or gpus_per_job"
            )
        size = self.gpus_per_job
        return [",".join(pool[k * size : (k + 1) * size]) for k in range(self.n_jobs)]

    def _prepare(self, num: int, overrides: list[str]) -> _Job:
        assert self.config is not None and self.hydra_context is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        sweep_dir = str(sweep_config.hydra.sweep.dir)
        subdir = str(sweep_config.hydra.sweep.subdir)
        job_dir = Path(sweep_dir, subdir).resolve()
        with open_dict(sweep_config):
            sweep_config.hydra.runtime.output_dir = str(job_dir)

        parser = OverridesParser.create()
        hydra_overrides = [
            override
            for override in OmegaConf.to_container(self.config.hydra.overrides.hydra)
            if not _is_replaced(_override_key(str(override), parser))
        ]
        writer = f"{JobReturnWriter.__module__}.{JobReturnWriter.__qualname__}"
        command = [
            *entry_command(self.config.hydra.runtime.cwd),
            *overrides,
            *hydra_overrides,
            # a single run even when a config file says `hydra.mode: MULTIRUN` (e.g. an
            # hparams_search config): otherwise every job would sweep again, recursively
            "hydra.mode=RUN",
            f"hydra.run.dir={quote_override_value(str(job_dir))}",
            # the job knows the sweep it belongs to (e.g. to group its W&B run)
            f"hydra.sweep.dir={quote_override_value(str(Path(sweep_dir).resolve()))}",
            f"hydra.sweep.subdir={quote_override_value(subdir)}",
            f"hydra.job.num={num}",
            f"hydra.job.id={num}",
            f"++hydra.callbacks.{_CALLBACK_NAME}={{_target_:{writer},launcher_pid:{os.getpid()}}}",
        ]
        return _Job(num, list(overrides), sweep_config, job_dir, command)

    # ---------------------------------------------------------------------------------- run
    def _run(self, jobs: list[_Job], slots: list[str | None]) -> list[JobReturn]:
        pending = deque(jobs)
        running: list[_Job] = []
        free_slots = list(range(self.n_jobs))
        returns: dict[int, JobReturn] = {}
        try:
            while pending or running:
                while pending and free_slots:
                    job = pending.popleft()
                    job.slot = free_slots.pop(0)
                    self._start(job, slots[job.slot])
                    running.append(job)
                time.sleep(_POLL_S)
                for job in list(running):
                    assert job.process is not None
                    code = job.process.poll()
                    if code is None:
                        self._enforce_timeout(job)
                        continue
                    returns[job.num] = self._finish(job, code)
                    running.remove(job)
                    free_slots.append(job.slot)
        except BaseException:  # Ctrl-C or an error here: no job may outlive the sweep
            for job in running:
                self._stop(job, "the sweep was interrupted", signal.SIGINT)
            for job in running:
                self._wait_or_kill(job)
            raise
        return [returns[job.num] for job in jobs]

    def _start(self, job: _Job, visible_devices: str | None) -> None:
        job.job_dir.mkdir(parents=True, exist_ok=True)
        (job.job_dir / JOB_RETURN_FILE).unlink(missing_ok=True)  # a rerun must not read a stale one
        env = {key: value for key, value in os.environ.items() if key not in _DISTRIBUTED_ENV}
        env[JOB_ENV_MARKER] = f"{job.num} of {self.config.hydra.sweep.dir}"
        if visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible_devices
        threads = self._threads_per_job()
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        to_file = self.output == "file" or (self.output == "auto" and self.n_jobs > 1)
        if to_file:
            job.output = open(job.job_dir / JOB_OUTPUT_FILE, "ab")  # noqa: SIM115 - closed in _finish
        log.info(
            "\t#%d : %s -> %s%s",
            job.num,
            " ".join(filter_overrides(job.overrides)),
            job.job_dir,
            f" (CUDA_VISIBLE_DEVICES={visible_devices})" if visible_devices is not None else "",
        )
        job.started = time.monotonic()
        job.process = subprocess.Popen(
            job.command,
            cwd=str(self.config.hydra.runtime.cwd),
            env=env,
            stdout=job.output,
            stderr=subprocess.STDOUT if job.output is not None else None,
            # its own process group: the job and the DDP ranks it spawns are stopped together
            start_new_session=True,
        )

    def _threads_per_job(self) -> int | None:
        """OMP_NUM_THREADS for every job (None: leave the environment as it is)."""
        if self.threads_per_job is not None:
            return self.threads_per_job
        if self.n_jobs == 1 or "OMP_NUM_THREADS" in os.environ:
            return None
        return max(1, _usable_cpus() // self.n_jobs)

    def _enforce_timeout(self, job: _Job) -> None:
        if self.timeout_s is None:
            return
        elapsed = time.monotonic() - job.started
        if job.stop_sent is None and elapsed > self.timeout_s:
            self._stop(job, f"timeout ({self.timeout_s / 60:g} min)", signal.SIGTERM)
        elif job.stop_sent is not None and time.monotonic() - job.stop_sent > _STOP_GRACE_S:
            _signal_group(job, signal.SIGKILL)

    def _stop(self, job: _Job, reason: str, signum: signal.Signals) -> None:
        log.warning("job #%d: stopping (%s)", job.num, reason)
        job.stop_reason = reason
        job.stop_sent = time.monotonic()
        _signal_group(job, signum)

    def _wait_or_kill(self, job: _Job) -> None:
        assert job.process is not None
        try:
            job.process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(job, signal.SIGKILL)
            job.process.wait()
        _signal_group(job, signal.SIGKILL)  # DDP ranks left behind by an interrupted job
        if job.output is not None:
            job.output.close()

    def _finish(self, job: _Job, code: int) -> JobReturn:
        if job.output is not None:
            job.output.close()
        if code != 0:
            # ranks the job spawned may wait forever in a collective for the dead one
            _signal_group(job, signal.SIGKILL)
        seconds = time.monotonic() - job.started
        record = _read_job_return(job.job_dir / JOB_RETURN_FILE)
        task_cfg = OmegaConf.masked_copy(job.config, [k for k in job.config if k != "hydra"])
        ret = JobReturn(
            overrides=job.overrides,
            cfg=task_cfg,
            hydra_cfg=OmegaConf.masked_copy(job.config, "hydra"),
            working_dir=str(self.config.hydra.runtime.cwd),
            task_name=str(job.config.hydra.job.name),
        )
        if code == 0 and record is not None and record.get("status") == "COMPLETED":
            ret.status = JobStatus.COMPLETED
            ret.return_value = record.get("return_value")
            log.info("job #%d done in %.1f s (%s)", job.num, seconds, job.job_dir)
            return ret
        if job.stop_reason:
            why = f"stopped: {job.stop_reason}"
        elif record is not None and record.get("status") == "FAILED":
            why = str(record.get("error"))
        elif code == 0:
            why = f"exited without writing {JOB_RETURN_FILE} (is the entry a @hydra.main script?)"
        else:
            why = _describe_exit(code)
        message = (
            f"job #{job.num} ({' '.join(job.overrides)}) failed after {seconds:.1f} s: {why}; "
            f"{_describe_exit(code)}; its log is in {job.job_dir}"
        )
        log.error(message)
        ret.status = JobStatus.FAILED
        ret.return_value = JobFailedError(message)
        return ret


def _signal_group(job: _Job, signum: signal.Signals) -> None:
    assert job.process is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(job.process.pid, signum)


def _read_job_return(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is unreadable; treating the job as failed", path)
        return None
    return record if isinstance(record, dict) else None
