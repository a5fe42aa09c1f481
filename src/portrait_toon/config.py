"""Config helpers: OmegaConf resolvers, in-process composition, and checks that turn config
mistakes (typos, unknown keys, missing weight files) into errors naming the key and the fix.

Importing this module registers the resolvers the config tree uses (`run_token`,
`project_root`, `auto_precision`, `perceptual_weights`); the entry points import it before Hydra
composes.
"""

from __future__ import annotations

import importlib
import importlib.util
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
      it comes from (`make weights`); `evaluate.inception_weights`, when the held-out
      evaluation runs, names an existing file (and torch-fidelity is installed), so a bad path
      stops the run now, not after the training it would have measured.
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
        check_inception_weights(cfg)
        _check_weight_files(cfg)


INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
"""The FID Inception-v3 weights `evaluate.inception_weights` names (torch-fidelity's release)."""


def check_inception_weights(cfg: DictConfig) -> None:
    """`ConfigError` unless `evaluate.inception_weights` is unset, the evaluation is off
    (`evaluate.enabled=false`), or it names a file and torch-fidelity (the network's code)
    is installed: evaluation/distribution.py `InceptionFeatures` loads it at the END of a
    training or of every ablation rung."""
    select = {"default": None, "throw_on_resolution_failure": False}
    path = OmegaConf.select(cfg, "evaluate.inception_weights", **select)
    enabled = OmegaConf.select(cfg, "evaluate.enabled", **select)
    if not path or enabled is False:
        return
    if not Path(str(path)).expanduser().is_file():
        raise ConfigError(
            f"evaluate.inception_weights={path}: no such file. It must be the FID Inception-v3 "
            f"weights ({INCEPTION_WEIGHTS_FILE}, from torch-fidelity's releases on GitHub) "
            "that fid_inception / kid_inception use; or set evaluate.inception_weights=null "
            "to skip those two metrics"
        )
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ConfigError(
            f"evaluate.inception_weights={path} is set, but the Inception network's code comes "
            "from torch-fidelity, which is not installed: `pip install torch-fidelity` (it "
            "needs torchvision), or set evaluate.inception_weights=null"
        )


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
