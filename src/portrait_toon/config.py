"""Config helpers: OmegaConf resolvers, in-process composition, and checks that turn config
mistakes (typos, unknown keys, missing weight files) into errors naming the key and the fix.

Importing this module registers the resolvers the config tree uses (`run_token`,
`project_root`, `auto_precision`, `perceptual_weights`); the entry points import it before Hydra
composes.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The Hydra config tree (repository root / conf; the package is installed editable)."""

# Hydra's own keys of an instantiable node: never passed to the target as arguments.
_HYDRA_SPECIAL_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})

# Random per process: two jobs launched in the same second still get different run folders.
# Stable within the process so every interpolation of the run folder agrees.
_RUN_TOKEN = secrets.token_hex(3)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


# --------------------------------------------------------------------------------------------
# resolvers
def run_token() -> str:
    """Six hex digits, random per process (a suffix that keeps run folders unique)."""
    return _RUN_TOKEN


def project_root() -> str:
    """$PROJECT_ROOT if set, else Hydra's launch directory, else the current directory."""
    env_root = os.environ.get("PROJECT_ROOT")
    if env_root:
        return env_root
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.cwd
        if cwd:
            return str(cwd)
    return os.getcwd()


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning precision for an accelerator: fp32 on CPU, bf16-mixed on a bf16-capable GPU.

    bf16 autocast on CPU is many times slower than fp32, so CPU always trains in fp32.
    """
    import torch

    accelerator = str(accelerator).lower()
    wants_gpu = accelerator in {"gpu", "cuda"} or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if not wants_gpu or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


# perceptual kind -> the weight file it loads from paths.weights_dir (`make weights` fetches it)
PERCEPTUAL_WEIGHT_FILES = {"vgg19": "vgg19-dcbb9e9d.pth"}


def perceptual_weights(kind: str, weights_dir: str) -> str | None:
    """The default `weights_path` of a perceptual network of `kind`.

    vgg19: `<weights_dir>/vgg19-dcbb9e9d.pth`, so a missing file is the usual error naming it
    and `make weights`; None for kinds that bring their own file (stlpips: the one inside the
    stlpips-pytorch wheel) or need none.
    """
    name = PERCEPTUAL_WEIGHT_FILES.get(str(kind))
    return None if name is None else f"{weights_dir}{os.sep}{name}"


def register_resolvers() -> None:
    """Register this project's OmegaConf resolvers (idempotent)."""
    for name, function in (
        ("run_token", run_token),
        ("project_root", project_root),
        ("auto_precision", auto_precision),
        ("perceptual_weights", perceptual_weights),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()


# --------------------------------------------------------------------------------------------
# composition outside `@hydra.main` (tests, notebooks, other tasks)
def compose_config(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike[str] | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> DictConfig:
    """Compose `conf/<config_name>.yaml` in-process, as `python <config_name>.py` would.

    Hydra's runtime node is filled in (`${hydra:runtime.output_dir}` = `output_dir`, created
    if given) so every interpolation resolves; the returned config has no `hydra` key.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    config_dir = Path(config_dir or CONF_DIR).resolve()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            cfg.hydra.runtime.output_dir = str(Path(output_dir).resolve())
        else:
            cfg.hydra.runtime.output_dir = OmegaConf.to_container(cfg.hydra.run, resolve=True)[
                "dir"
            ]
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.set_struct(cfg, True)
    return cfg


# --------------------------------------------------------------------------------------------
# debug shrinking: keys that only some component choices have
def apply_set_if_present(cfg: DictConfig) -> list[str]:
    """Apply `cfg.set_if_present` ("dotted.key=value" strings) where the key exists.

    A debug config cannot set e.g. `model.net.base_channels` blindly: another model choice may
    not have that argument and would then fail to build. Keys absent from the composed config
    are skipped, and so are keys given on the command line (the user's override wins, as it
    does for every other config value). Returns the assignments that were applied.
    """
    entries = cfg.get("set_if_present") or []
    from_command_line = _command_line_keys(cfg)
    applied: list[str] = []
    for entry in entries:
        key, sep, raw_value = str(entry).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"set_if_present entry {entry!r} is not of the form 'dotted.key=value'"
            )
        if key in from_command_line:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        value = OmegaConf.create({"v": _yaml_value(raw_value)}).v
        with open_dict(parent):
            parent[leaf] = value
        applied.append(f"{key}={raw_value.strip()}")
    if applied:
        log.info("debug shrink applied: %s", ", ".join(applied))
    return applied


def _command_line_keys(cfg: DictConfig) -> set[str]:
    """Dotted keys whose VALUE the command line set (`trainer.max_steps=6`; not group choices)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = str(override).split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if not isinstance(value, DictConfig):  # a group choice selects a whole node
            keys.add(key)
    return keys


def _yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text.strip() else None


# --------------------------------------------------------------------------------------------
# validation
def validate(cfg: DictConfig, *, check_targets: bool = True, check_weights: bool = True) -> None:
    """Raise `ConfigError` for config mistakes that Hydra itself lets through.

    Hydra (struct mode) already rejects unknown keys and choices given on the command line.
    A key added by a config FILE (an experiment with a typo) is merged silently, so this checks:
    - every `_target_` node: each key is an argument of the target (unless it takes **kwargs);
    - `augmentation`: only the keys of conf/augmentation/default.yaml;
    - weight files: a path under `paths.weights_dir` that does not exist is named, with where
      it comes from (`make weights`).
    """
    if not OmegaConf.is_struct(cfg):
        # struct mode is what turns `trainer.max_stpes=3` into an error instead of a new key
        OmegaConf.set_struct(cfg, True)
    problems: list[str] = []
    if check_targets:
        problems += _check_target_arguments(cfg)
    problems += _check_against_reference(cfg, "augmentation", "augmentation/default.yaml")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    cpu_half_precision_warning(cfg)
    if check_weights:
        _check_weight_files(cfg)


def cpu_half_precision_warning(cfg: DictConfig) -> str | None:
    """Log (and return) a warning when `trainer.precision` asks for bf16/fp16 on the CPU.

    Allowed, but bf16 autocast on a CPU is tens of times slower than fp32 (measured 50-200x on
    this project's CPUs), so CPU trainers default to 32-true and bf16 is only a GPU default.
    """
    select = {"default": None, "throw_on_resolution_failure": False}
    precision = OmegaConf.select(cfg, "trainer.precision", **select)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", **select) or "auto")
    if precision is None or "16" not in str(precision):
        return None
    import torch

    if accelerator != "cpu" and not (accelerator == "auto" and not torch.cuda.is_available()):
        return None
    message = (
        f"trainer.precision={precision} with trainer.accelerator={accelerator} runs on the CPU, "
        "where bf16/fp16 is tens of times slower than fp32: set trainer.precision=32-true "
        "(trainer=cpu's default) unless you mean to"
    )
    log.warning(message)
    return message


def _iter_target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            child = node._get_node(key)
            if child is None or OmegaConf.is_missing(node, key):
                continue
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - unresolved interpolation: not a node to inspect
                continue
            yield from _iter_target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            yield from _iter_target_nodes(value, f"{path}[{i}]")


def _import_target(target: str) -> Any:
    module_name, _, attr = target.rpartition(".")
    while module_name:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            module_name, _, parent_attr = module_name.rpartition(".")
            attr = f"{parent_attr}.{attr}"
            continue
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise ImportError(target)


def _check_target_arguments(cfg: DictConfig) -> list[str]:
    problems = []
    for path, node in _iter_target_nodes(cfg):
        target = node._get_node("_target_")._value()
        if not isinstance(target, str):
            continue
        try:
            obj = _import_target(target)
        except (ImportError, AttributeError) as error:
            problems.append(f"{path}._target_: cannot import {target!r} ({error})")
            continue
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        parameters = signature.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        accepted = {
            name
            for name, p in parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        for key in node:
            if key in _HYDRA_SPECIAL_KEYS or key in accepted:
                continue
            where = f"{path}.{key}" if path else str(key)
            problems.append(
                f"{where}: {target} has no argument {key!r} "
                f"(it takes: {', '.join(sorted(accepted))})"
            )
    return problems


def _check_against_reference(cfg: DictConfig, key: str, reference_file: str) -> list[str]:
    """Keys of `cfg[key]` that the group's reference file does not define (typos in files)."""
    reference_path = CONF_DIR / reference_file
    if key not in cfg or not reference_path.is_file():
        return []
    reference = OmegaConf.load(reference_path)
    reference = {k: v for k, v in reference.items() if k != "defaults"}
    problems: list[str] = []

    def walk(node: Any, ref: Any, path: str) -> None:
        if not isinstance(node, DictConfig) or not isinstance(ref, dict | DictConfig):
            return
        for child in node:
            where = f"{path}.{child}"
            if child not in ref:
                known = ", ".join(str(k) for k in ref)
                problems.append(
                    f"{where}: unknown key (not in conf/{reference_file}; known: {known})"
                )
            else:
                walk(node._get_node(child), ref[child], where)

    walk(cfg[key], OmegaConf.create(reference), key)
    return problems


def _check_weight_files(cfg: DictConfig) -> None:
    weights_dir = OmegaConf.select(cfg, "paths.weights_dir", throw_on_resolution_failure=False)
    if not weights_dir:
        return
    weights_dir = str(Path(weights_dir))
    missing: list[str] = []
    for path, value in _iter_string_leaves(cfg):
        if path.startswith(("paths.", "hydra.")):
            continue
        if value.startswith(weights_dir + os.sep) and not Path(value).exists():
            missing.append(f"{path} = {value}")
    if missing:
        raise ConfigError(
            "missing weight files:\n  - "
            + "\n  - ".join(missing)
            + f"\nThey belong in paths.weights_dir ({weights_dir}). `make weights` fetches the "
            "public checkpoints (see README, 'Real weights'); or pick the embedded world "
            "(generator=procedural mixer=procedural segmenter=procedural), which needs none."
        )


def _iter_string_leaves(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, DictConfig):
        for key in node:
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - unresolvable interpolation: not a file path
                continue
            yield from _iter_string_leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            yield from _iter_string_leaves(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# --------------------------------------------------------------------------------------------
# resume
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
# resume: continue a run with the overrides it was started with
RUN_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
"""Where Hydra records a run's command-line overrides (inside the run folder)."""

# Hydra flags that take the next word as their value (`-cn train`, `--cfg job`)
_FLAGS_WITH_VALUE = frozenset(
    {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-p", "--package"}
    | {"-c", "--cfg", "-i", "--info", "--experimental-rerun"}
)
_MULTIRUN_FLAGS = frozenset({"-m", "--multirun"})


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
    overrides, then the ones typed now (which win, e.g. a larger `trainer.max_steps`). Flags
    pass through; multirun jobs are rewritten in their own processes (hydra/launcher=process
    starts each one as a single run in its folder). Unparsable words are left to Hydra.
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
    return flags + merge_overrides(saved_run_overrides(run), overrides)
