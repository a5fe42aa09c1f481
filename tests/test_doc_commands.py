"""Every command the documentation shows works as typed (tests/doc_commands.py collects them
from README.md, docs/*.md and the header comments of conf/**/*.yaml).

- composition: each `python <script>.py ...` / `make <target> ...` composes its Hydra config
  with exactly the overrides shown (placeholders such as `<run>`, `PATH` or `/data/...` replaced
  by fixture paths) and passes the checks the entry points run first (`config.validate`,
  weight files aside); a multirun composes every sweep point, an Optuna search one trial, and
  a swept axis must change something (not a weight of a loss term the config turns off).
  `make` targets run the script their Makefile recipe names; scripts without Hydra parse
  their arguments. A failure names the doc's file and line (the test id).
- running: the commands of train.py, synthesize.py, stylize.py and evaluate.py that need no
  GPU, cluster or sweep run in this process at `debug=tiny` (step and pair counts capped),
  in a scratch project folder; the trainings beyond the one that makes the `<run>` fixture
  are marked slow.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doc_commands import (
    REPO_ROOT,
    DocCommand,
    all_doc_commands,
    hydra_config_name,
    is_placeholder,
    make_targets,
    make_variables,
    make_variables_not_overrides,
    substitute,
)
from omegaconf import DictConfig, OmegaConf

from portrait_toon import config, resume

COMMANDS = all_doc_commands()


def _ids(commands: list[DocCommand]) -> list[str]:
    ids: list[str] = []
    for command in commands:
        ids.append(command.id if command.id not in ids else f"{command.id}+{ids.count(command.id)}")
    return ids


# --------------------------------------------------------------------------------------------
# from a documented command to Hydra jobs
FIXTURE_RUN = "fixture_run"
MULTIRUN_FLAGS = {"-m", "--multirun"}
# an override that makes a job need more than this machine (GPUs, a cluster, a sweeper)
NOT_RUNNABLE = re.compile(r"^(trainer=(gpu|ddp)\b|hydra/launcher=|\+?hparams_search=|device=cuda)")
# keys whose documented values are full-size budgets: capped when the command is run
RUN_CAPS = {
    "trainer.max_steps": "4",
    "num_pairs": "6",
    "shard_size": "4",
    "trainer.max_time": "null",
}


class Job:
    """One Hydra job of a documented command: the script, its config and its overrides."""

    def __init__(self, script: str, config_name: str | None, overrides: list[str]) -> None:
        self.script = script
        self.config_name = config_name
        self.overrides = overrides
        self.multirun = False


def fixtures_for(root: Path) -> dict[str, str]:
    return {
        "root": str(root),
        "run": FIXTURE_RUN,
        "time": FIXTURE_RUN,
        "sweep": str(root / "sweep"),
        "sweep_dir": str(root / "sweep"),
        "n": "0",
        "job_num": "0",
        "name": "alice",
        "data.root": str(root / "data" / "pairs"),
        "ckpt": str(root / "logs" / "demo" / "runs" / FIXTURE_RUN / "stylizer.pt"),
    }


def command_job(command: DocCommand, root: Path) -> Job | None:
    """The script and overrides a command runs (None: a make target without a script)."""
    words = list(command.words)
    if command.program == "make":
        targets = make_targets()
        name = words.pop(0)
        assert name in targets, f"`make {name}`: the Makefile has no target {name!r}"
        target = targets[name]
        not_overrides = make_variables_not_overrides()
        for word in words:
            variable = word.split("=", 1)[0]
            if variable.isupper():
                assert variable in make_variables(), f"`{word}`: the Makefile has no {variable}"
        extra = [w.split("=", 1)[1].split() for w in words if w.startswith("ARGS=")]
        words = [w for w in words if w.split("=", 1)[0] not in not_overrides]
        words += [w for args in extra for w in args]  # ARGS="..." holds overrides too
        if target.script is None:
            assert not words, f"`make {name}` takes no Hydra overrides, the doc passes {words}"
            return None
        script, words = target.script, [*target.fixed, *words]
    else:
        script = words.pop(0)
    if (REPO_ROOT / script).is_file() and hydra_config_name(script) is None:
        return Job(script, None, words)  # a script's own options, parsed by its own parser
    flags = {w for w in words if w.startswith("-")}
    overrides = [w for w in words if not w.startswith("-")] + list(command.optional)
    fixtures = fixtures_for(root)
    overrides = [_each_choice(w) or substitute(w, fixtures) for w in overrides]
    job = Job(script, hydra_config_name(script), overrides)
    job.multirun = bool(flags & MULTIRUN_FLAGS)
    if job.config_name and "resume_arguments" in (REPO_ROOT / script).read_text("utf-8"):
        job.overrides = resume.resume_arguments(job.overrides)  # as the entry point does
    return job


EACH = "<each choice>"


def _each_choice(word: str) -> str | None:
    """`experiment=X` (a placeholder choice of a config group): every choice of the group."""
    key, _, value = word.partition("=")
    if (REPO_ROOT / "conf" / key.lstrip("+~")).is_dir() and is_placeholder(value):
        return f"{key}={EACH}"
    return None


def group_choices(group: str) -> list[str]:
    folder = REPO_ROOT / "conf" / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def expand(job: Job) -> list[list[str]]:
    """The override lists of every job: a placeholder choice of a config group
    (`experiment=X`) becomes each choice; sweeps (`a=1,2`) become each combination."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lists: list[list[str]] = [[]]
    for word in job.overrides:
        key, _, value = word.partition("=")
        if value == EACH:
            choices = group_choices(key.lstrip("+~"))
            lists = [[*head, f"{key}={choice}"] for head in lists for choice in choices]
        else:
            lists = [[*head, word] for head in lists]
    parser = OverridesParser.create()
    expanded: list[list[str]] = []
    for overrides in lists:
        parsed = parser.parse_overrides(overrides)
        if any(o.is_sweep_override() for o in parsed):
            assert job.multirun, f"sweep values {overrides} need -m (multirun)"
            for batch in BasicSweeper.split_arguments(parsed, None):
                expanded += batch
        else:
            expanded.append(overrides)
    return expanded


# --------------------------------------------------------------------------------------------
# composition
def _register_optuna_stand_in() -> None:
    """hparams_search=optuna selects hydra/sweeper=optuna, which the optional extra provides;
    without it, a stand-in node with the sweeper's keys lets the rest of the config compose."""
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        group="hydra/sweeper",
        name="optuna",
        node={
            "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
            "sampler": {},
            "direction": "minimize",
            "storage": None,
            "study_name": None,
            "n_trials": 20,
            "n_jobs": 2,
            "search_space": None,
            "params": None,
            "custom_search_space": None,
        },
        provider="tests",
    )


_COMPOSED: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}


def compose(config_name: str, overrides: list[str], root: Path) -> tuple[DictConfig, DictConfig]:
    """The job's config (shrunk and checked as the entry points do) and Hydra's own node
    (each distinct command composed once per session: many docs repeat a command)."""
    from hydra.core.hydra_config import HydraConfig

    key = (config_name, str(root), *overrides)
    if key not in _COMPOSED:
        cfg = config.compose_config(config_name, overrides, root / "compose_output")
        hydra_cfg = HydraConfig.get()
        config.apply_set_if_present(cfg)
        config.validate(cfg, check_weights=False)
        _COMPOSED[key] = cfg, hydra_cfg
    return _COMPOSED[key]


def optuna_trial(hydra_cfg: DictConfig) -> dict[str, str]:
    """One point of the Optuna search space (`hydra.sweeper.params`): each axis's first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
    point = {}
    for key, spec in params.items():
        value = OverridesParser.create().parse_override(f"{key}={spec}").value()
        if isinstance(value, IntervalSweep):
            value = value.start
        elif isinstance(value, ChoiceSweep):
            value = value.list[0]
        elif isinstance(value, RangeSweep):
            value = value.start
        point[str(key)] = str(value)
    return point


def dead_axes(cfg: DictConfig, axes: list[str]) -> list[str]:
    """Swept keys that cannot change the run: their node is turned off (`kind: none`,
    `enabled: false`), e.g. `loss.adv.weight` where `loss.adv.kind=none`."""
    dead = []
    for axis in axes:
        parent_key = axis.lstrip("+~").rpartition(".")[0]
        parent = OmegaConf.select(cfg, parent_key) if parent_key else None
        if not isinstance(parent, DictConfig):
            continue
        if parent.get("kind", "") == "none" or parent.get("enabled", True) is False:
            reason = "kind=none" if parent.get("kind", "") == "none" else "enabled=false"
            dead.append(f"{axis} (this config has {parent_key}.{reason})")
    return dead


PARSERS = ("parse_args", "parse_arguments")


def call_parse_args(script: str, args: list[str]) -> None:
    """A script without Hydra: its own parser (`parse_args`/`parse_arguments(argv)`, or
    `build_parser()`), or that of the project module whose `main` it calls, must accept the
    documented arguments; a script shown without arguments must import."""
    name = f"doc_script_{Path(script).stem}"
    source = (REPO_ROOT / script).read_text(encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    sys.path.insert(0, str((REPO_ROOT / script).parent))  # as `python <script>` has it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not args:
        return  # nothing to parse: the script imports
    delegate = re.search(r"from (portrait_toon[\w.]*) import main\b", source)
    modules = [module] + ([importlib.import_module(delegate.group(1))] if delegate else [])
    for candidate in modules:
        for parser in PARSERS:
            if callable(getattr(candidate, parser, None)):
                getattr(candidate, parser)(args)
                return
        if callable(getattr(candidate, "build_parser", None)):
            candidate.build_parser().parse_args(args)
            return
    raise AssertionError(f"{script}: neither Hydra nor a parser ({', '.join(PARSERS)}) to check")


@pytest.fixture()
def project(tmp_path_factory, monkeypatch) -> Path:
    """A scratch project folder: PROJECT_ROOT and the working directory (relative paths of the
    docs: logs/, weights/, photos/)."""
    root = tmp_path_factory.getbasetemp() / "doc_project"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("PROJECT_ROOT", str(root))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_documented_command_composes(command: DocCommand, project: Path) -> None:
    where = f"{command.id}: `{command.text}`"
    job = command_job(command, project)
    if job is None:
        return  # a make target without a script (test, lint, install ...): it exists
    assert (REPO_ROOT / job.script).is_file(), f"{where}: no script {job.script}"
    if job.config_name is None:
        call_parse_args(job.script, job.overrides)
        return
    _register_optuna_stand_in()
    for overrides in expand(job):
        try:
            cfg, hydra_cfg = compose(job.config_name, overrides, project)
            sweep = [o.split("=", 1)[0] for o in command_sweep_axes(command)]
            trial = optuna_trial(hydra_cfg)
            if trial:
                point = [f"{k}={v}" for k, v in trial.items()]
                cfg, _ = compose(job.config_name, [*overrides, *point], project)
                sweep += list(trial)
        except Exception as error:  # noqa: BLE001 - the doc line is what the reader needs
            pytest.fail(f"{where} does not compose with {overrides}:\n{error}", pytrace=False)
        dead = dead_axes(cfg, sweep)
        assert not dead, f"{where}: swept axes that do nothing here: {dead}"


def command_sweep_axes(command: DocCommand) -> list[str]:
    return [w for w in command.words if "=" in w and "," in w.split("=", 1)[1]]


# --------------------------------------------------------------------------------------------
# running
def _runner(script: str) -> Callable[[DictConfig], Any] | None:
    if script == "train.py":
        from portrait_toon.tasks.train import train

        return train
    if script == "synthesize.py":
        from portrait_toon.tasks.synthesize import synthesize

        return synthesize
    if script == "stylize.py":
        from portrait_toon.tasks.stylize import stylize

        return stylize
    if script == "evaluate.py":
        from portrait_toon.tasks.evaluate import evaluate

        return evaluate
    return None


RUNNABLE_SCRIPTS = ("train.py", "synthesize.py", "stylize.py", "evaluate.py")


def runnable(command: DocCommand) -> bool:
    try:
        job = command_job(command, Path("/nonexistent"))
    except AssertionError:
        return False  # the composition test reports it
    if job is None or job.script not in RUNNABLE_SCRIPTS or job.multirun:
        return False
    return not any(NOT_RUNNABLE.match(w) or w.endswith(EACH) for w in job.overrides)


def _distinct_runs() -> list[Any]:
    seen: dict[tuple[str, ...], DocCommand] = {}
    for command in COMMANDS:
        if runnable(command):
            job = command_job(command, Path("/nonexistent"))
            seen.setdefault((job.script, *job.overrides), command)
    params = []
    for command in seen.values():
        heavy = command_job(command, Path("/nonexistent")).script == "train.py"
        marks = [pytest.mark.slow] if heavy else []
        params.append(pytest.param(command, id=command.id, marks=marks))
    return params


def make_fixture_project(root: Path) -> None:
    """What the runnable commands read: a trained tiny demo run (`<run>`, with its Hydra
    record and stylizer.pt) linked under every task's runs folder the docs name, photos/, a
    shards folder and a folder of character faces."""
    from PIL import Image

    from portrait_toon.data.faces import embedded_character_faces
    from portrait_toon.tasks.synthesize import synthesize
    from portrait_toon.tasks.train import train

    run = root / "logs" / "demo" / "runs" / FIXTURE_RUN
    if not (run / "stylizer.pt").is_file():
        overrides = ["experiment=demo", "debug=tiny", "logger=csv"]
        train(config.compose_config("train", overrides, run))
        (run / ".hydra").mkdir(exist_ok=True)
        (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    texts = "\n".join(c.text for c in COMMANDS)
    # debug=tiny sets task_name=debug: `ckpt_path=last` looks in logs/debug/runs
    for task in (set(re.findall(r"logs/(\w+)/runs/", texts)) | {"debug"}) - {"demo"}:
        link = root / "logs" / task / "runs" / FIXTURE_RUN
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(run, target_is_directory=True)
    photos = root / "photos"
    if not photos.is_dir():
        photos.mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(photos / "a.png")
        Image.fromarray(rng.integers(0, 255, (24, 36), dtype=np.uint8)).save(photos / "b.jpg")
    shards = Path(fixtures_for(root)["data.root"])
    if not shards.is_dir():
        synthesize(
            config.compose_config(
                "synthesize", ["debug=tiny", f"out_dir={shards}"], root / "logs" / "shards"
            )
        )
    for folder in set(re.findall(r"image_dir=(/[\w/]+)", texts)):
        faces = Path(str(root) + folder)
        if not faces.is_dir():
            faces.mkdir(parents=True)
            for i, face in enumerate(embedded_character_faces(3, 64, seed=1)):
                Image.fromarray(face.permute(1, 2, 0).numpy()).save(faces / f"face_{i}.png")


@pytest.mark.parametrize("command", _distinct_runs())
def test_documented_command_runs_at_debug_tiny(command: DocCommand, project: Path) -> None:
    make_fixture_project(project)
    job = command_job(command, project)
    overrides = list(job.overrides)
    has_debug = "- debug:" in (REPO_ROOT / "conf" / f"{job.config_name}.yaml").read_text("utf-8")
    if has_debug and "debug=tiny" not in overrides:
        overrides.append("debug=tiny")
    set_keys = {w.split("=", 1)[0] for w in overrides}
    overrides += [f"{k}={v}" for k, v in RUN_CAPS.items() if k in set_keys]
    if job.script == "train.py" and not any(w.startswith("logger=") for w in overrides):
        overrides.append("logger=csv")  # W&B's start-up is the slowest part of a tiny run
    cfg = config.compose_config(job.config_name, overrides)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        _runner(job.script)(cfg)
    except Exception as error:  # noqa: BLE001 - the doc line is what the reader needs
        pytest.fail(
            f"{command.id}: `{command.text}` fails at debug=tiny ({overrides}):\n"
            f"{type(error).__name__}: {error}",
            pytrace=False,
        )
