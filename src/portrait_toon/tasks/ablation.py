"""`python ablation.py` (`make ablation`): train the paper's baseline and each step of the
method with the same seed, budget and held-out set, then write one report.

    python ablation.py [experiment=BASE] [ablation.KEY=VALUE ...] [train.py overrides ...]

1. A multirun of train.py through the project's process launcher, one job per rung:
   `experiment=ablation/<rung>` on the embedded world (BASE demo), or
   `experiment=ablation/<BASE>/<rung>` on another base recipe (webtoonme_512: the real
   networks). Every other word goes to every rung job (`debug=tiny`, `trainer=gpu`,
   `trainer.max_steps=...`).
2. The summary: the held-out sets are made once from the reference rung's config (the full
   method, `ablation.reference`, with the overrides its job was trained with); every rung's
   exported F is measured on them by `measure_sets` (evaluation/heldout.py); ablation.json,
   ablation.md and ablation.png go into the sweep folder. `ablation.train=false
   ablation.sweep_dir=DIR` re-summarises a finished sweep (words typed then go on top of the
   jobs' saved ones).
The reference config is composed and validated before the ladder starts, so a config mistake
(e.g. a missing `evaluate.inception_weights` file) stops it before any rung trains.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from portrait_toon import config

log = logging.getLogger(__name__)

ABLATION_CONFIG = config.CONF_DIR / "ablation.yaml"
EMBEDDED_BASE = "demo"


class AblationError(RuntimeError):
    """The ladder cannot run or a rung produced no network; the message says what to do."""


def parse_arguments(argv: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """(the `ablation` options: conf/ablation.yaml + `ablation.KEY=VALUE` words with
    `experiment=BASE` as `ablation.base`, the train.py overrides: every other word)."""
    options = OmegaConf.load(ABLATION_CONFIG).ablation
    OmegaConf.set_struct(options, True)
    mine, overrides = [], []
    for word in argv:
        if word in ("-m", "--multirun"):
            raise AblationError("ablation.py runs the multirun itself: leave out -m")
        if word.startswith("ablation."):
            mine.append(word[len("ablation.") :])
        elif word.startswith("experiment="):
            mine.append(f"base={word.split('=', 1)[1]}")
        else:
            overrides.append(word)
    try:
        options = OmegaConf.merge(options, OmegaConf.from_dotlist(mine))
    except Exception as error:  # noqa: BLE001 - an unknown key: name the file that lists them
        raise AblationError(f"{error}; the ablation.* keys are in {ABLATION_CONFIG}") from None
    return options, overrides


def rung_experiment(base: str, rung: str) -> str:
    """The train.py experiment of `rung` on the base recipe `base` (checked to exist)."""
    name = f"ablation/{rung}" if base == EMBEDDED_BASE else f"ablation/{base}/{rung}"
    if not (config.CONF_DIR / "experiment" / f"{name}.yaml").is_file():
        bases = sorted(
            p.name for p in (config.CONF_DIR / "experiment" / "ablation").iterdir() if p.is_dir()
        )
        raise AblationError(
            f"no rung config conf/experiment/{name}.yaml: experiment={base} has no ablation "
            f"ladder (bases with one: {EMBEDDED_BASE}, {', '.join(bases)}); add "
            f"conf/experiment/ablation/{base}/<rung>.yaml like ablation/webtoonme_512"
        )
    return name


def _default_sweep_dir() -> Path:
    root = Path(os.environ.get("PROJECT_ROOT") or os.getcwd())
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return root / "logs" / "ablation" / "multiruns" / f"{stamp}_{config.run_token()}"


def run_ladder(options: DictConfig, overrides: Sequence[str], sweep_dir: Path) -> None:
    """Train every rung: one `train.py -m` multirun (process launcher, one job per rung)."""
    experiments = ",".join(rung_experiment(options.base, rung) for rung in options.rungs)
    command = [
        sys.executable,
        str(config.CONF_DIR.parent / "train.py"),
        "-m",
        f"experiment={experiments}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    log.info("ablation ladder: %s", shlex.join(command))
    code = subprocess.call(command, cwd=config.CONF_DIR.parent)
    if code != 0:
        raise AblationError(
            f"the ladder's multirun failed (exit {code}); each job's log is in {sweep_dir}/<n>/"
        )


def rung_folders(sweep_dir: Path, base: str, rungs: Sequence[str]) -> dict[str, Path]:
    """rung -> its job folder in the sweep: the job whose `experiment` choice (its
    .hydra/hydra.yaml) is `rung_experiment(base, rung)`. A sweep of another base recipe, or
    one without a job for a rung, is one error naming what each folder trained."""
    jobs: dict[str, Path] = {}
    for hydra_file in sorted(sweep_dir.glob("*/.hydra/hydra.yaml")):
        choice = OmegaConf.load(hydra_file).hydra.runtime.choices.get("experiment")
        if choice:
            jobs.setdefault(str(choice), hydra_file.parent.parent)
    found = {}
    for rung in rungs:
        experiment = rung_experiment(base, rung)
        if experiment in jobs:
            found[rung] = jobs[experiment]
    missing = [rung for rung in rungs if rung not in found]
    if missing:
        trained = "; ".join(f"{folder.name}/: experiment={e}" for e, folder in jobs.items())
        wanted = ", ".join(f"experiment={rung_experiment(base, rung)}" for rung in missing)
        raise AblationError(
            f"{sweep_dir}: no job folder trained {wanted} (the rungs {missing} on the base "
            f"recipe experiment={base}); the folders trained: {trained or 'nothing'}. Give the "
            "base the sweep was trained with (experiment=BASE), or the sweep of this base"
        )
    return found


def reference_config(
    options: DictConfig, overrides: Sequence[str], saved: Sequence[str] = ()
) -> DictConfig:
    """The train config whose held-out sets every rung is scored on: the reference rung's
    experiment, on top of `saved` (a rung job's own overrides, for a finished sweep) and
    under the words typed now (which win), debug-shrunk."""
    from portrait_toon.resume import merge_overrides

    experiment = rung_experiment(options.base, options.reference)
    words = merge_overrides(saved, [f"experiment={experiment}", *overrides])
    cfg = config.compose_config("train", words)
    config.apply_set_if_present(cfg)
    with open_dict(cfg):
        cfg.evaluate.stlpips = bool(options.stlpips)
    return cfg


def _job_command(folder: Path) -> str:
    overrides = OmegaConf.load(folder / ".hydra" / "overrides.yaml")
    return shlex.join(["python", "train.py", *[str(o) for o in overrides]])


def machine_description() -> str:
    """CPU model and count, GPU (if any), torch version: where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {usable} usable CPUs, {gpu}, torch {torch.__version__}, {platform.system()}"


def _picture_rows(sets: dict[str, list], count: int, unseen: int) -> list[dict[str, Any]]:
    """Held-out inputs shown in ablation.png: `count` plain frames spread over the set (the
    stratified set cycles through framings and skin tones), `unseen` unseen-landscape frames
    and the scikit-image astronaut (a real portrait photo, no target)."""
    from portrait_toon.evaluation.heldout import astronaut
    from portrait_toon.evaluation.metrics import ita_degrees, masked_mean_lab, rgb_to_lab

    def flat(batches: list[dict]) -> list[dict[str, Any]]:
        return [
            {key: batch[key][i] for key in ("src", "tgt", "skin_mask", "index")}
            for batch in batches
            for i in range(batch["src"].shape[0])
        ]

    plain = flat(sets["plain"])
    span = min(len(plain), 30)
    picks = np.unique(np.linspace(0, span - 1, min(count, span)).round().astype(int))
    rows = []
    for pick in picks.tolist():
        item = plain[pick]
        lab = rgb_to_lab(item["src"][None].float())
        mean, mass = masked_mean_lab(lab, item["skin_mask"][None].float())
        tone = f", input skin ITA {float(ita_degrees(mean)[0]):+.0f}" if mass[0] > 0 else ""
        label = f"held-out pair {int(item['index'])}{tone}"
        rows.append({"label": label, "src": item["src"], "tgt": item["tgt"]})
    for item in flat(sets.get("unseen_landscape", []))[:unseen]:
        label = f"unseen landscape, pair {int(item['index'])}"
        rows.append({"label": label, "src": item["src"], "tgt": item["tgt"]})
    size = int(sets["plain"][0]["src"].shape[-1])
    photo = astronaut(size)[0].to(sets["plain"][0]["src"].device)
    rows.append({"label": "real photo: scikit-image astronaut", "src": photo, "tgt": None})
    return rows


@torch.no_grad()
def summarize(
    sweep_dir: Path, options: DictConfig, overrides: Sequence[str], command: str
) -> dict[str, Any]:
    """Measure every rung's F on the reference rung's held-out sets; write the three files."""
    from portrait_toon.evaluation.ablation import (
        write_ablation_json,
        write_ablation_markdown,
        write_ablation_png,
    )
    from portrait_toon.evaluation.heldout import measure_sets
    from portrait_toon.evaluation.records import checkpoint_step, json_ready
    from portrait_toon.resume import saved_run_overrides
    from portrait_toon.tasks.evaluate import STYLIZER_FILE, heldout_sets, metric_networks
    from portrait_toon.utils.generator_file import load_stylizer

    rungs = list(options.rungs)
    folders = rung_folders(sweep_dir, options.base, rungs)
    # the held-out set of the sweep as it was trained (its jobs' saved overrides: a re-summary
    # needs no retyping), the reference rung's experiment on top (any rung's job will do)
    job = folders.get(options.reference, folders[rungs[0]])
    cfg = reference_config(options, overrides, saved_run_overrides(job))
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if options.device == "auto"
        else options.device
    )
    sets = heldout_sets(cfg, device)
    perceptual, make_distributions = metric_networks(cfg, device)
    rows = _picture_rows(sets, int(options.picture_frames), int(options.picture_landscapes))
    variants: dict[str, Any] = {}
    for rung in rungs:
        path = folders[rung] / STYLIZER_FILE
        if not path.is_file():
            raise AblationError(
                f"rung {rung}: {path} is missing (did its job fail? see {folders[rung]})"
            )
        net = load_stylizer(path, device=device)
        metrics = measure_sets(net, sets, perceptual, make_distributions)
        metrics["steps"] = checkpoint_step(path)
        variants[rung] = json_ready(metrics)
        for row in rows:
            row.setdefault("outputs", {})[rung] = net(row["src"][None].float())[0].clamp(-1, 1)
        log.info("rung %s: %s", rung, {k: variants[rung].get(k) for k in SUMMARY_LOG_KEYS})
    commands = {rung: _job_command(folders[rung]) for rung in rungs}
    machine = machine_description()
    heldout = {name: sum(int(b["src"].shape[0]) for b in batches) for name, batches in sets.items()}
    write_ablation_json(
        sweep_dir,
        variants,
        reference=options.reference,
        heldout_pairs=heldout,
        command=command,
        machine=machine,
        commands=commands,
    )
    write_ablation_markdown(
        sweep_dir,
        variants,
        commands,
        machine,
        command,
        notes=[f"Held-out pairs: {heldout}; reference targets: the `{options.reference}` rung."],
    )
    write_ablation_png(sweep_dir, rows, rungs)
    log.info("ablation report: %s/ablation.{json,md,png}", sweep_dir)
    return variants


SUMMARY_LOG_KEYS = (
    "l1_output_target",
    "skin_delta_e00_mean",
    "whitewash_rate",
    "background_delta_e00_mean",
    "unseen_landscape_background_stlpips_mean",
    "kid_stlpips",
)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run the ladder (unless `ablation.train=false`) and write the report."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    options, overrides = parse_arguments(argv)
    for rung in options.rungs:
        rung_experiment(options.base, rung)  # every rung config exists before anything runs
    sweep_dir = Path(options.sweep_dir) if options.sweep_dir else _default_sweep_dir()
    sweep_dir = sweep_dir.resolve()
    if options.train:
        # config mistakes (a missing evaluate.inception_weights file, a typo) stop the ladder
        # now, not when the summary (or every rung's final evaluation) reads them
        config.validate(reference_config(options, overrides))
        run_ladder(options, overrides, sweep_dir)
    elif not sweep_dir.is_dir():
        raise AblationError(f"ablation.train=false: ablation.sweep_dir {sweep_dir} is no folder")
    command = shlex.join(["python", "ablation.py", *argv])
    return summarize(sweep_dir, options, overrides, command)
