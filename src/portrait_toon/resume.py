"""Resuming a training run: which checkpoint `ckpt_path` names, the command-line rewrite that
re-applies a run's own overrides (`python train.py hydra.run.dir=<run> ckpt_path=last`), and
the check that a resumed checkpoint fits the model built from this config.

A shared low-level module like `config`: it imports Hydra/OmegaConf at the top and torch only
inside the checkpoint check, so the entry point can rewrite its arguments before Hydra runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from portrait_toon.config import ConfigError

RUN_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
"""Where Hydra records a run's command-line overrides (inside the run folder)."""

OVERRIDES_KEY = "hydra_overrides"
"""Checkpoint key of the Hydra overrides the run was composed with (tasks/train.py's
`RecordOverrides` writes it into every checkpoint)."""

# Hydra flags that take the next word as their value (`-cn train`, `--cfg job`)
_FLAGS_WITH_VALUE = frozenset(
    {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-p", "--package"}
    | {"-c", "--cfg", "-i", "--info", "--experimental-rerun"}
)
_MULTIRUN_FLAGS = frozenset({"-m", "--multirun"})
# A resume is one run, even when the run's saved overrides pick a config that says
# `hydra.mode: MULTIRUN` (an Optuna trial's `hparams_search=optuna`): without this it would
# start a new study. hydra/launcher=process starts each sweep job the same way.
SINGLE_RUN_OVERRIDE = "hydra.mode=RUN"


# --------------------------------------------------------------------------------------------
# which checkpoint
def resolve_ckpt_path(
    ckpt_path: str | os.PathLike[str] | None, output_dir: str | os.PathLike[str], runs_dir: str
) -> str | None:
    """Turn `ckpt_path` into a checkpoint file, or None for a fresh run.

    - None: fresh run;
    - `last`: `<output_dir>/checkpoints/last.ckpt` if it exists (rerun in the same folder),
      else the newest `<runs_dir>/*/checkpoints/last.ckpt`;
    - a folder: its `checkpoints/last.ckpt` (or `last.ckpt` directly inside);
    - a file: itself.
    """
    if ckpt_path is None or str(ckpt_path).strip() in {"", "null", "None"}:
        return None
    if str(ckpt_path) == "last":
        own = Path(output_dir) / "checkpoints" / "last.ckpt"
        if own.is_file():
            return str(own)
        candidates = sorted(
            Path(runs_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise ConfigError(
                f"ckpt_path=last: no last.ckpt in {own.parent} nor under {runs_dir}/*/checkpoints;"
                " start a fresh run (ckpt_path=null) or give a checkpoint file or run folder"
            )
        return str(candidates[-1])
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return str(candidate)
        raise ConfigError(f"ckpt_path={ckpt_path}: the folder has no checkpoints/last.ckpt")
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file or run folder")
    return str(path)


# --------------------------------------------------------------------------------------------
# continue a run with the overrides it was started with
def resumed_run_folder(ckpt_path: str | None, run_dir: str | None) -> Path | None:
    """The run folder whose training a resume continues, when it has saved overrides.

    `ckpt_path=last` with `hydra.run.dir=<run>`: that folder; `ckpt_path=<run folder>`: it;
    `ckpt_path=<run>/checkpoints/x.ckpt`: `<run>`. None for a fresh run, or when the folder
    has no `.hydra/overrides.yaml` (`ckpt_path=last` without a run folder: the experiment on
    the command line picks which runs it searches).
    """
    if ckpt_path is None or str(ckpt_path).strip() in {"", "null", "None"}:
        return None
    if str(ckpt_path) == "last":
        candidates = [Path(run_dir)] if run_dir else []
    else:
        path = Path(str(ckpt_path)).expanduser()
        candidates = [path] if path.is_dir() else [path.parent.parent, path.parent]
    for folder in candidates:
        if (folder / RUN_OVERRIDES_FILE).is_file():
            return folder
    return None


def saved_run_overrides(run: str | os.PathLike[str]) -> list[str]:
    """The overrides a run was started with (`<run>/.hydra/overrides.yaml`)."""
    path = Path(run) / RUN_OVERRIDES_FILE
    saved = OmegaConf.load(path)
    if not isinstance(saved, ListConfig):
        raise ConfigError(f"{path}: expected a list of overrides (Hydra writes one per run)")
    return [str(item) for item in saved]


def merge_overrides(saved: Sequence[str], new: Sequence[str]) -> list[str]:
    """`saved` then `new`, where an override in `new` replaces the saved one of the same key.

    A saved `+key=v` (a key the config adds) stays an addition: `key=w` on top becomes
    `+key=w`, since Hydra would reject changing a key the base config lacks.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    saved_parsed = parser.parse_overrides(list(saved))
    new_parsed = parser.parse_overrides(list(new))
    new_keys = {(o.key_or_group, o.package) for o in new_parsed}
    saved_types = {(o.key_or_group, o.package): o.type for o in saved_parsed}
    merged = [o.input_line for o in saved_parsed if (o.key_or_group, o.package) not in new_keys]
    for override in new_parsed:
        line = override.input_line
        was = saved_types.get((override.key_or_group, override.package))
        added = was in (OverrideType.ADD, OverrideType.FORCE_ADD)
        if added and override.type == OverrideType.CHANGE:
            line = "+" + line
        merged.append(line)
    return merged


def resume_arguments(argv: Sequence[str]) -> list[str]:
    """Command-line words with a resumed run's own overrides put first (`python train.py`).

    `python train.py hydra.run.dir=<run> ckpt_path=last [key=value ...]` must continue THAT
    experiment: Hydra composes before any task code runs and then overwrites the run's
    `.hydra/overrides.yaml`, so the entry point rewrites its arguments first: the run's saved
    overrides, then the ones typed now (which win, e.g. a larger `trainer.max_steps`), then
    `hydra.mode=RUN` unless typed (a resumed Optuna trial is that one trial, not a new study).
    Flags pass through; multirun jobs are rewritten in their own processes
    (hydra/launcher=process starts each one as a single run in its folder). Unparsable words
    are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    flags: list[str] = []
    overrides: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            flags.append(word)
            takes_value = word in _FLAGS_WITH_VALUE and "=" not in word
            if takes_value and i + 1 < len(words) and "=" not in words[i + 1]:
                flags.append(words[i + 1])
                i += 1
        else:
            overrides.append(word)
        i += 1
    if _MULTIRUN_FLAGS & set(flags):
        return words
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return words
    values = {o.key_or_group: o.value() for o in parsed if o.package is None}
    run = resumed_run_folder(values.get("ckpt_path"), values.get("hydra.run.dir"))
    if run is None:
        return words
    single_run = [] if "hydra.mode" in values else [SINGLE_RUN_OVERRIDE]
    return flags + merge_overrides(saved_run_overrides(run), overrides) + single_run


# --------------------------------------------------------------------------------------------
# does the checkpoint fit the model built here
def check_checkpoint_fits(model: Any, ckpt_path: str) -> None:
    """One clear error when a resumed checkpoint's weights do not fit the model built here.

    Lightning would stop inside `fit` with a raw `size mismatch for net...` traceback. The
    usual cause is a resume composed without the run's overrides (another experiment or
    model); the error names the differing weights, the model settings that differ and the
    overrides of the run and of this config. Only key names and shapes are compared: nothing
    is loaded into `model` (Lightning loads the checkpoint once, in `fit`).
    """
    from portrait_toon.checkpoints import CheckpointMismatchError, check_fits, load_state_dict_file

    content = load_state_dict_file(ckpt_path)
    state = content.get("state_dict")
    if not isinstance(state, dict) or not getattr(model, "strict_loading", True):
        return  # not a Lightning checkpoint (Lightning says so), or a module that loads loosely
    try:
        expected = f"the {type(model).__name__} here"
        check_fits(model.state_dict(), state, source=ckpt_path, expected=expected)
    except CheckpointMismatchError as error:
        lines = [str(error)]
        saved = _differing_hparams(content, dict(model.hparams))
        if saved:
            lines.append("  model settings, checkpoint vs this config: " + "; ".join(saved))
        run_overrides, where = _run_overrides(content, ckpt_path)
        if run_overrides is not None:
            lines.append(f"  the run's overrides ({where}): {' '.join(run_overrides) or '(none)'}")
        lines.append(f"  this config's overrides: {' '.join(task_overrides()) or '(none)'}")
        lines.append(
            "Resume with the run's own config: `python train.py hydra.run.dir=<run> "
            "ckpt_path=last` re-applies its overrides; otherwise give the same experiment/model "
            "overrides it was trained with."
        )
        raise ConfigError("\n".join(lines)) from None


def task_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job ([] outside one)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _run_overrides(checkpoint: dict[str, Any], ckpt_path: str) -> tuple[list[str] | None, str]:
    """The overrides the checkpoint's run was composed with, and where they were read."""
    stored = checkpoint.get(OVERRIDES_KEY)
    if isinstance(stored, list):
        return [str(o) for o in stored], "recorded in the checkpoint"
    run = resumed_run_folder(ckpt_path, None)
    if run is None:
        return None, ""
    return saved_run_overrides(run), str(run / RUN_OVERRIDES_FILE)


def _differing_hparams(checkpoint: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: checkpoint value vs current value` for the saved hyperparameters that differ."""
    saved = checkpoint.get("hyper_parameters")
    if not isinstance(saved, dict):
        return []
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    return [
        f"{key}: {flat_saved.get(key)!r} vs {flat_current.get(key)!r}"
        for key in sorted(set(flat_saved) | set(flat_current))
        if flat_saved.get(key) != flat_current.get(key)
    ]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}
