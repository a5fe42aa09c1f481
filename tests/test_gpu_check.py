"""`make gpu-check` (benchmarks/gpu_check.py, gpu_steps.py, gpu_figures.py): what runs
without a GPU.

The argument handling, the plan's fit to the budget, the JSON writer, the step runner's error
capture, time limits and process-group kill (on small subprocesses), the checks that read what a
step wrote, the no-CUDA exit, the `gpu` marker's skip reason, and the figure code itself run on
the CPU at tiny sizes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
gpu_check = importlib.import_module("gpu_check")
gpu_steps = importlib.import_module("gpu_steps")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# ---------------------------------------------------------------------------- arguments
def test_arguments_defaults_and_errors():
    args = gpu_check.parse_args([])
    assert args.budget == gpu_check.DEFAULT_BUDGET_S == 300
    assert args.out.name == "gpu_check.json" and args.out.parent.parent.name == "gpu_check"
    args = gpu_check.parse_args(["--out", "x/report.json", "--budget", "60", "--only", "train"])
    assert (args.out, args.budget, args.only) == (Path("x/report.json"), 60.0, "train")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget", "0"])


def test_steps_and_their_selection(tmp_path):
    groups = gpu_check.build_steps(tmp_path, devices=4, python="python")
    names = [step.name for group in groups for step in group]
    assert names[0] == "tests: pytest -m gpu" and len(groups[0]) == 4  # run at the same time
    assert "train: trainer=ddp on 4 GPU(s)" in names
    ddp = next(s for s in groups[0] if "ddp" in s.name)
    assert "trainer.devices=4" in ddp.command and "debug=tiny" in ddp.command
    assert all(len(group) == 1 for group in groups[1:])  # figures one at a time
    assert [s.name for g in groups[1:] for s in g] == [f"figure: {f}" for f in gpu_check.FIGURES]
    chosen = gpu_check.select(groups, "train,figure: train_step")
    assert [s.name for g in chosen for s in g] == [
        "train: demo, trainer=gpu",
        "train: webtoonme_512, trainer=gpu",
        "train: trainer=ddp on 4 GPU(s)",
        "figure: train_step",
    ]


def test_the_plan_fits_the_budget(tmp_path):
    """Groups run one after the other, a group as long as its slowest step: the limits along
    that path fit the budget (room left to start and end the processes), for any --budget."""
    gpu_figures = importlib.import_module("gpu_figures")
    assert gpu_check.FIGURES == gpu_figures.FIGURES
    for budget in (gpu_check.DEFAULT_BUDGET_S, 600.0):
        groups = gpu_check.build_steps(tmp_path, devices=2, budget_s=budget, python="python")
        longest = [max(step.limit_s for step in group) for group in groups]
        assert sum(longest) <= 0.97 * budget, longest
        assert min(longest) >= gpu_steps.MIN_STEP_S
        # the last figure starts at least its first compiled case within its own time limit
        compiled = groups[-1][0]
        assert compiled.name == "figure: inference_compiled"
        own_limit = compiled.limit_s - gpu_steps.OWN_LIMIT_SPARE_S
        assert own_limit >= gpu_figures.MIN_CASE_S["compiled"]


# ---------------------------------------------------------------------------------- JSON
def test_report_writer_gives_strict_json(tmp_path):
    report = {"a": math.nan, "b": [1.5, math.inf], "c": tmp_path, "d": {1: True, "e": None}}
    path = gpu_steps.write_report(tmp_path / "sub" / "gpu_check.json", report)
    assert json.loads(path.read_text()) == {
        "a": None,
        "b": [1.5, None],
        "c": str(tmp_path),
        "d": {"1": True, "e": None},
    }
    assert [p.name for p in path.parent.iterdir()] == ["gpu_check.json"]  # no temp file left


# -------------------------------------------------------------------------------- runner
def test_runner_records_every_outcome_and_goes_on(tmp_path):
    lines = []
    runner = gpu_steps.StepRunner(60, tmp_path, echo=lines.append, min_step_s=1)

    def broken_check(outcome):
        raise ValueError("metrics.json has no l1")

    def verdict(outcome):
        raise gpu_steps.StepFailure("1 case failed", {"passed": 3})

    def nothing_measured(outcome):
        raise gpu_steps.StepSkipped("no case measured", {"cases_skipped": 8})

    Step = gpu_steps.Step
    records = runner.run_group(
        [
            Step("ok", "x", python("print('fine')"), 20, lambda outcome: {"value": 1}),
            Step("exit", "x", python("import sys; print('boom'); sys.exit(3)"), 20),
            Step("check", "x", python("pass"), 20, broken_check),
            Step("hang", "x", python("import time; time.sleep(60)"), 1.5),
            Step("missing", "x", [str(tmp_path / "no_such_program")], 20),
            Step("verdict", "x", python("pass"), 20, verdict),
            Step("cut", "x", python("pass"), 20, nothing_measured),
            Step("crash, cut", "x", python("import sys; sys.exit(1)"), 20, nothing_measured),
        ]
    )
    by_name = {r["name"]: r for r in records}
    assert by_name["ok"]["status"] == "passed" and by_name["ok"]["result"] == {"value": 1}
    assert by_name["exit"]["status"] == "failed"
    assert "exit status 3" in by_name["exit"]["error"] and "boom" in by_name["exit"]["error"]
    assert by_name["check"]["error"] == "ValueError: metrics.json has no l1"
    assert by_name["hang"]["status"] == "failed" and "timed out" in by_name["hang"]["error"]
    assert by_name["hang"]["seconds"] < 10  # killed, not waited for
    assert "could not start" in by_name["missing"]["error"]
    assert by_name["verdict"]["status"] == "failed"
    assert by_name["verdict"]["result"] == {"passed": 3}  # kept beside the error
    assert by_name["cut"]["status"] == "skipped" and by_name["cut"]["error"] == "no case measured"
    assert by_name["cut"]["result"] == {"cases_skipped": 8}
    assert by_name["crash, cut"]["status"] == "failed"  # a failure outranks a skip
    assert len(lines) == 8 and any(line.startswith("[") and "FAIL hang" in line for line in lines)
    assert any("SKIP cut" in line for line in lines)
    assert Path(by_name["ok"]["log"]).read_text().strip() == "fine"


def test_runner_keeps_to_the_budget(tmp_path):
    runner = gpu_steps.StepRunner(3, tmp_path, echo=lambda line: None, min_step_s=1)
    step = gpu_steps.Step(
        "limit", "x", python("import sys; print(sys.argv[1])") + [gpu_steps.TIME_LIMIT], 60
    )
    started = time.monotonic()
    first = runner.run_group(
        [gpu_steps.Step("slow", "x", python("import time; time.sleep(30)"), 60)]
    )
    assert first[0]["status"] == "failed" and time.monotonic() - started < 10
    second = runner.run_group([step])
    assert second[-1]["status"] == "skipped" and "not started" in second[-1]["error"]

    runner = gpu_steps.StepRunner(100, tmp_path, echo=lambda line: None)
    runner.run_group([step])
    # the step's own time limit is what is left of its limit, with 15 s to spare
    assert Path(runner.records[0]["log"]).read_text().strip() == "45"


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its parent does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_kill_group_kills_a_rank_that_ignores_sigterm_after_its_leader_is_gone(tmp_path):
    """A DDP rank stuck in NCCL or catching SIGTERM stays in the step's process group after the
    leader exited and was reaped (`wait` returns at once): it is killed all the same."""
    pid_file = tmp_path / "rank.pid"
    rank = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)"
    )
    leader = (
        "import os, subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {rank!r}, sys.argv[1]]); "
        "deadline = time.monotonic() + 20\n"
        "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline: time.sleep(0.05)"
    )
    process = subprocess.Popen([*python(leader), str(pid_file)], start_new_session=True)
    rank_pid = None
    try:
        assert process.wait(timeout=30) == 0  # the leader has exited and is reaped
        rank_pid = int(pid_file.read_text())
        assert running(rank_pid)
        gpu_steps.kill_group(process, grace_s=0.5)
        deadline = time.monotonic() + 5
        while running(rank_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(rank_pid), "the rank ignoring SIGTERM was left running"
    finally:
        if rank_pid is not None and running(rank_pid):
            os.kill(rank_pid, signal.SIGKILL)

    # a group that ends on SIGTERM is not waited for the whole grace period
    process = subprocess.Popen(python("import time; time.sleep(60)"), start_new_session=True)
    time.sleep(0.3)
    started = time.monotonic()
    gpu_steps.kill_group(process, grace_s=10)
    assert process.returncode == -signal.SIGTERM and time.monotonic() - started < 5


# -------------------------------------------------------------------------------- checks
def test_pytest_counts_reads_junit_and_refuses_skips(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase name="a"/><testcase name="b"><failure message="bisenet: 0.2 &gt; 1e-3"/>'
        '</testcase><testcase name="c"/></testsuite></testsuites>'
    )
    stats = tmp_path / "cases.jsonl"
    stats.write_text('{"case": "bisenet/feat_out", "max_rel": 0.2}\n')
    counts = gpu_check.pytest_counts(xml, stats)
    assert (counts["tests"], counts["passed"], counts["failures"]) == (3, 2, 1)
    assert counts["not_passed"] == [{"test": "b", "failure": "bisenet: 0.2 > 1e-3"}]
    assert counts["cases"] == [{"case": "bisenet/feat_out", "max_rel": 0.2}]
    xml.write_text('<testsuite tests="2" skipped="2"><testcase name="a"><skipped/></testcase>'
                   '<testcase name="b"><skipped/></testcase></testsuite>')  # fmt: skip
    with pytest.raises(gpu_steps.StepFailure, match="2 gpu test") as failure:
        gpu_check.pytest_counts(xml)
    assert failure.value.result["skipped"] == 2  # what was read stays in the report


def test_figures_check_fails_on_a_failed_case_and_keeps_the_figures(tmp_path):
    out = tmp_path / "figure.json"
    check = gpu_check.figures_check(out, "inference")
    with pytest.raises(FileNotFoundError):
        check(None)
    good = {"F_unet 1024x1024 fp32": {"ms": 2.0, "fps": 500.0}}
    out.write_text(json.dumps({"inference": good}))
    assert check(None) == {"inference": good}
    bad = {**good, "animeganv2 4K bf16": {"error": "OutOfMemoryError: CUDA out of memory"}}
    out.write_text(json.dumps({"inference_compiled": bad}))
    with pytest.raises(gpu_steps.StepFailure, match="OutOfMemoryError") as failure:
        gpu_check.figures_check(out, "inference_compiled")(None)
    assert failure.value.result["inference_compiled"]["F_unet 1024x1024 fp32"]["fps"] == 500
    out.write_text(json.dumps({"errors": {"train_step": "Traceback ... OutOfMemoryError"}}))
    with pytest.raises(gpu_steps.StepFailure, match="OutOfMemoryError"):
        gpu_check.figures_check(out, "train_step")(None)
    out.write_text(json.dumps({"device": "H100"}))
    with pytest.raises(gpu_steps.StepFailure, match="no synthesis figure"):
        gpu_check.figures_check(out, "synthesis")(None)


def test_a_figure_step_with_every_case_cut_for_time_is_skipped_not_passed(tmp_path):
    out = tmp_path / "figure.json"
    check = gpu_check.figures_check(out, "inference_compiled")
    cut = {"skipped": "time limit reached"}
    out.write_text(json.dumps({"inference_compiled": {"F_unet 1024x1024 fp32": cut, "b": cut}}))
    with pytest.raises(gpu_steps.StepSkipped, match="all 2 cut for time") as skipped:
        check(None)
    assert skipped.value.result["cases_skipped"] == 2
    measured = {"F_unet 1024x1024 fp32": {"ms": 9.0, "fps": 111.1}, "b": cut}
    out.write_text(json.dumps({"inference_compiled": measured}))
    assert check(None)["cases_skipped"] == 1  # some numbers: passed, with the cut ones counted


def test_run_folder_check(tmp_path):
    run = tmp_path / "run"
    check = gpu_check.run_folder_check(run, world_size=2)
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        check(None)
    (run / "checkpoints").mkdir(parents=True)
    (run / "stylizer.pt").write_bytes(b"x")
    (run / "metrics.json").write_text(json.dumps({"l1_output_target": 0.1, "steps": 4}))
    state = {"global_step": 4, "OnTheFlyDataModule": {"next_position": 16}}
    torch.save(state, run / "checkpoints" / "last.ckpt")
    result = check(None)
    assert result["global_step"] == 4 and result["pairs_consumed"] == 16
    assert result["l1_output_target"] == 0.1
    with pytest.raises(RuntimeError, match="32 pairs consumed"):  # two ranks' pairs only
        gpu_check.run_folder_check(run, world_size=4)(None)


def test_derived_figures():
    records = [
        {"name": "figure: synthesis", "result": {"synthesis": {
            "total_ms (forward, default config)": 300.0}}},
        {"name": "figure: train_step", "result": {"train_step": {"ms": 100.0}}},
    ]  # fmt: skip
    derived = gpu_check.derived_figures(records)
    assert derived["synthesis_over_train_step"] == 3.0
    assert derived["synthesis_over_train_step_with_reuse_6"] == 0.5
    assert gpu_check.derived_figures(records[:1]) == {}


# ------------------------------------------------------------------------------ no CUDA
def test_without_cuda_one_line_exit_0_and_no_lightning():
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; "
        "status = gpu_check.main([]); "
        "assert 'pytorch_lightning' not in sys.modules; sys.exit(status)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.monotonic()
    done = subprocess.run(
        python(code), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().count("\n") == 0
    assert done.stdout.startswith("gpu-check: no CUDA device")
    assert time.monotonic() - started < 60


def test_gpu_marker_collected_and_skipped_with_its_reason():
    """The default suite collects the gpu tests and, without CUDA, skips them saying why."""
    from conftest import cuda_skip_reason

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/gpu"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 skipped" in done.stdout
    assert "needs a CUDA device" in done.stdout and "make gpu-check" in done.stdout
    if not torch.cuda.is_available():
        assert cuda_skip_reason() in done.stdout


def test_cuda_skip_reason(monkeypatch):
    from conftest import cuda_skip_reason

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_skip_reason() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "make gpu-check" in cuda_skip_reason()


# ------------------------------------------------------------------------------- figures
@pytest.fixture
def tiny_figures(monkeypatch):
    """gpu_figures on the CPU at tiny sizes, tiny StyleGAN2s, bf16 autocast off (tens of times
    slower on a CPU; the CUDA autocast is what matters)."""
    gpu_figures = importlib.import_module("gpu_figures")
    bench_synthesis = importlib.import_module("synthesis")
    monkeypatch.setattr(gpu_figures, "DEVICE", torch.device("cpu"))
    monkeypatch.setattr(gpu_figures, "autocast_bf16", contextlib.nullcontext)
    monkeypatch.setattr(gpu_figures, "SIZE", 64)
    monkeypatch.setattr(gpu_figures, "BATCH", 2)
    monkeypatch.setattr(gpu_figures, "INFER_SIZES", {"small": (40, 56)})
    monkeypatch.setitem(bench_synthesis.REAL_OPTIONS, "gen_size", 32)
    monkeypatch.setitem(bench_synthesis.REAL_OPTIONS, "gen_arch", "tiny")
    monkeypatch.setitem(bench_synthesis.REAL_OPTIONS, "parse_size", 64)
    return gpu_figures


def test_inference_figures_and_error_capture(tiny_figures, monkeypatch):
    recorder = tiny_figures.Recorder(None, time.monotonic() + 600)
    ok = tiny_figures.run(["inference"], recorder, runs=1)
    cases = recorder.data["inference"]
    assert ok, recorder.data.get("errors")
    names = {f"{n} small {p}" for n in ("F_unet", "animeganv2") for p in ("fp32", "bf16")}
    assert set(cases) == names
    assert all(case.get("fps", 0) > 0 for case in cases.values()), cases
    # past the deadline the remaining cases are listed as skipped
    recorder = tiny_figures.Recorder(None, time.monotonic())
    assert tiny_figures.run(["inference"], recorder, runs=1)
    assert all("skipped" in case for case in recorder.data["inference"].values())
    # a figure that fails is recorded and the next one still runs
    monkeypatch.setattr(tiny_figures, "figure_train_step", lambda recorder, runs: 1 / 0)
    recorder = tiny_figures.Recorder(None, time.monotonic())
    assert not tiny_figures.run(["train_step", "inference"], recorder, runs=1)
    assert "ZeroDivisionError" in recorder.data["errors"]["train_step"]
    assert "inference" in recorder.data


@pytest.mark.slow
def test_synthesis_and_train_step_figures_on_cpu(tiny_figures):
    recorder = tiny_figures.Recorder(None, time.monotonic() + 900)
    ok = tiny_figures.run(["synthesis", "train_step"], recorder, runs=1)
    data = recorder.data
    assert ok, data.get("errors")
    assert data["synthesis"]["batch"] == 2 and data["synthesis"]["pairs_per_s"] > 0
    assert "color_reflection" in data["synthesis"]["stages_ms"]
    assert data["train_step"]["pairs_per_s"] > 0


def test_main_writes_the_report_and_exits_1_on_a_failure(tmp_path, monkeypatch, capsys):
    """main's flow with CUDA faked and two cheap steps (one passing, one failing)."""
    Step = gpu_steps.Step

    def all_cut(outcome):
        raise gpu_steps.StepSkipped("no case measured: all 8 cut for time", {"cases_skipped": 8})

    steps = [
        [Step("tests: fine", "correctness", python("pass"), 20, lambda o: {"passed": 2})],
        [Step("figure: broken", "figures", python("import sys; sys.exit(2)"), 20)],
        [Step("figure: cut", "figures", python("pass"), 20, all_cut)],
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "environment", lambda: {"devices": ["fake"]})
    budgets = []
    monkeypatch.setattr(
        gpu_check, "build_steps", lambda work, devices, budget: budgets.append(budget) or steps
    )
    out = tmp_path / "check" / "gpu_check.json"
    assert gpu_check.main(["--out", str(out), "--budget", "60"]) == 1
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["summary"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert [r["status"] for r in report["steps"]] == ["passed", "failed", "skipped"]
    assert budgets == [60.0]  # the plan is scaled to the budget given
    printed = capsys.readouterr().out
    assert "PASS tests: fine" in printed and "FAIL figure: broken" in printed
    assert "SKIP figure: cut" in printed
    assert printed.rstrip().endswith(f"report written to {out}")
    assert gpu_check.main(["--out", str(out), "--only", "tests"]) == 0  # the passing one alone
    assert gpu_check.main(["--out", str(out), "--only", "tests,figure: cut"]) == 0  # skip != fail
