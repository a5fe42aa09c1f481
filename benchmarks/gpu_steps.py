"""The step runner of `make gpu-check` (benchmarks/gpu_check.py holds the plan and the CLI).

Each step is a subprocess in its own process group (its own session), with its own time limit
inside one global budget; a group's steps run at the same time. When a step ends (or runs out
of time) its whole process group is terminated, then killed, so nothing it started (DDP ranks,
data-loader workers) keeps a GPU while the next step measures. Each step's output goes to its
own log; a `check` reads what the step wrote into the step's record (status passed / failed /
skipped, seconds, result or error), and the records are written as one strict JSON document.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_STEP_S = 10.0  # a step with less time than this left is not started
TIME_LIMIT = "{time_limit}"  # in a step's command: replaced by its seconds left, minus 15
OWN_LIMIT_SPARE_S = 15.0  # between a step's own time limit and the runner's kill
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL this much later if anything of the group is left


class StepFailure(RuntimeError):
    """A check's verdict that the step failed, keeping what it did read (`result`)."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


class StepSkipped(RuntimeError):
    """A check's verdict that the step measured nothing (e.g. every case cut for time): neither
    passed nor failed. Keeps what it read (`result`)."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Outcome:
    """How a step's process ended."""

    returncode: int | None
    seconds: float
    timed_out: bool
    log: Path


@dataclass
class Step:
    """One subprocess of the check. `check(outcome)` reads what the step wrote and returns its
    figures (raise to fail the step, StepSkipped to skip it); it runs also when the process
    failed."""

    name: str
    phase: str
    command: list[str]
    limit_s: float
    check: Callable[[Outcome], dict] = lambda outcome: {}
    env: dict[str, str] = field(default_factory=dict)


class StepRunner:
    """Runs groups of steps (a group's steps at the same time) inside one time budget."""

    def __init__(
        self,
        budget_s: float,
        log_dir: Path,
        echo: Callable[[str], None] = print,
        min_step_s: float = MIN_STEP_S,
    ) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.log_dir = log_dir
        self.echo = echo
        self.min_step_s = min_step_s
        self.records: list[dict] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run_group(self, steps: list[Step]) -> list[dict]:
        running = []
        try:
            for step in steps:
                limit = min(step.limit_s, self.remaining())
                if limit < self.min_step_s:
                    self._finish(step, None, limit)
                    continue
                entry = self._start(step, limit)
                if entry is not None:
                    running.append(entry)
            while running:
                for entry in list(running):
                    step, process, handle, log, started, limit = entry
                    elapsed = time.monotonic() - started
                    if process.poll() is None and elapsed <= limit:
                        continue
                    timed_out = process.poll() is None
                    kill_group(process)  # also what it left behind (DDP ranks, workers)
                    handle.close()
                    running.remove(entry)
                    self._finish(step, Outcome(process.returncode, elapsed, timed_out, log), limit)
                time.sleep(0.2)
        finally:  # interrupted (Ctrl-C): leave nothing running on the GPUs
            for _, process, handle, *_ in running:
                kill_group(process)
                handle.close()
        return self.records

    def _start(self, step: Step, limit: float) -> tuple | None:
        log = self.log_dir / f"{slug(step.name)}.log"
        handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed when it ends
        # a step that keeps its own time gets what is left of its limit, with time to spare
        own_limit = str(round(max(5.0, limit - OWN_LIMIT_SPARE_S)))
        try:
            process = subprocess.Popen(
                [arg.replace(TIME_LIMIT, own_limit) for arg in step.command],
                cwd=REPO_ROOT,
                env={**os.environ, **step.env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except OSError as error:
            handle.write(f"could not start: {error}\n")
            handle.close()
            self._finish(step, Outcome(None, 0.0, False, log), limit)
            return None
        return step, process, handle, log, time.monotonic(), limit

    def _finish(self, step: Step, outcome: Outcome | None, limit: float) -> None:
        record: dict = {"name": step.name, "phase": step.phase, "command": _shell(step.command)}
        if outcome is None:
            record.update(status="skipped", seconds=0.0)
            record["error"] = f"not started: {max(limit, 0):.0f} s of the budget left"
        else:
            record.update(seconds=round(outcome.seconds, 1), limit_s=round(limit, 1))
            record["log"] = str(outcome.log)
            errors, skipped = [], None
            if outcome.timed_out:
                errors.append(f"timed out after {outcome.seconds:.0f} s (limit {limit:.0f} s)")
            elif outcome.returncode is None:
                errors.append(f"could not start: {_tail(outcome.log)}")
            elif outcome.returncode != 0:
                errors.append(f"exit status {outcome.returncode}: {_tail(outcome.log)}")
            try:
                record["result"] = step.check(outcome)
            except (StepFailure, StepSkipped) as verdict:
                record["result"] = verdict.result
                if isinstance(verdict, StepSkipped):
                    skipped = str(verdict)
                else:
                    errors.append(str(verdict))
            except Exception as error:  # noqa: BLE001 - recorded; the other steps go on
                errors.append(f"{type(error).__name__}: {error}")
            # a failure outranks a skip: a step that crashed and measured nothing failed
            record["status"] = "failed" if errors else "skipped" if skipped else "passed"
            if errors or skipped:
                record["error"] = "; ".join(errors) if errors else skipped
        self.records.append(record)
        self.echo(_line(record, time.monotonic() - self.started))


def kill_group(process: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """Terminate the step's process group, then kill whatever of it is left after `grace_s`.

    The group outlives its leader: DDP ranks and loader workers stay in it when the leader has
    exited (or been reaped, when `wait` returns at once), and a rank stuck in NCCL or catching
    SIGTERM (Lightning installs a handler) ignores the polite signal. So the group, not the
    leader, is waited for, and SIGKILL goes to it whenever anything is left. The group's id is
    the leader's pid (start_new_session).
    """
    pgid = process.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):  # nothing left in its group
        process.poll()
        return
    deadline = time.monotonic() + grace_s
    while True:
        process.poll()  # reap the leader: without /proc its zombie would count as running
        if not _group_alive(pgid):
            break
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # ended in between
                os.killpg(pgid, signal.SIGKILL)
            break
        time.sleep(0.05)
    # reap the leader (gone by now, unless stuck in uninterruptible I/O: then it is left)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is left that can still run (zombies cannot)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # no way to tell zombies apart: kill it
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # ended while we looked
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _line(record: dict, at: float) -> str:
    status = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[record["status"]]
    detail = record.get("error") or _summary(record.get("result") or {})
    return f"[{at:6.1f} s] {status} {record['name']} ({record['seconds']} s): {detail}"[:400]


def _summary(result: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str))


def _tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])[-1500:]


def slug(name: str) -> str:
    """A file-name form of a step's name (its log's, its run folder's)."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _shell(command: list[str]) -> str:
    return " ".join(command).replace(sys.executable, "python")


# ------------------------------------------------------------------------------- JSON output
def json_ready(value: object) -> object:
    """Plain JSON values: NaN/inf become null, paths and other objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def write_report(path: Path, report: dict) -> Path:
    """Write the report as indented JSON, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    text = json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n"
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path
