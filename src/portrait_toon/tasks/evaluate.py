"""Held-out evaluation of F: metrics.json and demo_report.png from pairs no training step saw.

Used after training (tasks/train.py) and on its own (`python evaluate.py ckpt_path=RUN`).
Held-out pairs are indices `evaluate.index_base + i` (far beyond any training index), made
with the run's synthesis config but without the random crop, so the report shows whole
frames; CutFace pairs are made apart (CutFace forced on) so the report has landscape rows and
the plain rows stay plain.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from portrait_toon import config, resume
from portrait_toon.evaluation.records import checkpoint_step, json_ready, write_json
from portrait_toon.tasks.synthesize import build_synthesizer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "demo_report.png"
STYLIZER_FILE = "stylizer.pt"


def _module_device(net: nn.Module) -> torch.device:
    for tensor in list(net.parameters()) + list(net.buffers()):
        return tensor.device
    return torch.device("cpu")


def _synthesized(
    synthesizer: torch.nn.Module,
    indices: list[int],
    batch_size: int,
    device: torch.device,
    landscapes: Any = None,
) -> list[dict[str, torch.Tensor]]:
    """The pairs `indices` in batches, with the synthesizer's stages (`background` = B(x), what
    the background metric compares F(x) with); `landscapes(index)` gives CutFace pictures."""
    batches = []
    for start in range(0, len(indices), batch_size):
        index = torch.tensor(indices[start : start + batch_size], dtype=torch.int64)
        pictures = None if landscapes is None else landscapes(index)
        with torch.no_grad():
            batches.append(synthesizer(index.to(device), pictures, True))
    return batches


def heldout_indices(cfg: DictConfig, synthesizer: torch.nn.Module) -> list[int]:
    """The plain frames' pair indices: `evaluate.num_images` from `evaluate.index_base` on,
    stratified by framing and skin tone with `evaluate.stratified` (evaluation/heldout.py)."""
    from portrait_toon.evaluation.heldout import stratified_indices

    ev = cfg.evaluate
    first, count = int(ev.index_base), int(ev.num_images)
    if OmegaConf.select(cfg, "evaluate.stratified", default=False):
        chosen = stratified_indices(synthesizer.generator, synthesizer.base_seed, first, count)
        if chosen is not None:
            return chosen
        log.info("evaluate.stratified: the generator has no scene parameters; plain indices")
    return list(range(first, first + count))


HELDOUT_SETS = ("plain", "cutface", "unseen_landscape")


def heldout_sets(
    cfg: DictConfig, device: torch.device, names: Sequence[str] = HELDOUT_SETS
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """The held-out pairs, uncropped: `plain` frames (CutFace off); `cutface` pairs (CutFace
    forced on, `evaluate.num_cutface`, when the config trains with it); `unseen_landscape`
    CutFace pairs on pictures no training bank uses (`evaluate.num_unseen_landscape`, from
    `evaluate.unseen_landscape_dir` or the held-out built-ins). Every set is a function of
    the config and `evaluate.base_seed` only; only the sets in `names` are made (each has the
    same pairs as when all are made: the later sets' indices follow the plain frames')."""
    from portrait_toon.synthesis.landscapes import LandscapeBank
    from portrait_toon.synthesis.latents import pair_seed

    unknown = sorted(set(names) - set(HELDOUT_SETS))
    if unknown:
        raise ValueError(f"heldout_sets: no held-out set {unknown}; the sets: {HELDOUT_SETS}")
    ev = cfg.evaluate
    base_seed, batch_size = int(ev.base_seed), int(ev.batch_size)
    cut_on = {"crop": {"enabled": False}, "cutface": {"enabled": True, "p": 1.0}}
    plain_synthesizer = build_synthesizer(
        cfg,
        base_seed=base_seed,
        augmentation_overrides={"crop": {"enabled": False}, "cutface": {"p": 0.0}},
    ).to(device)
    plain_indices = heldout_indices(cfg, plain_synthesizer)
    sets = {}
    if "plain" in names:
        sets["plain"] = _synthesized(plain_synthesizer, plain_indices, batch_size, device)
    # CutFace and unseen-landscape pairs take indices after the plain frames' range
    first = max(int(ev.index_base) + int(ev.num_images), max(plain_indices, default=0) + 1)
    count = int(ev.num_cutface)
    cutface = count > 0 and OmegaConf.select(cfg, "augmentation.cutface.enabled", default=False)
    if cutface and "cutface" in names:
        cut_synthesizer = build_synthesizer(cfg, base_seed=base_seed, augmentation_overrides=cut_on)
        indices = list(range(first, first + count))
        sets["cutface"] = _synthesized(cut_synthesizer.to(device), indices, batch_size, device)
    first += max(count, 0)
    unseen = int(OmegaConf.select(cfg, "evaluate.num_unseen_landscape", default=0) or 0)
    if unseen > 0 and "unseen_landscape" in names:
        bank = LandscapeBank(
            OmegaConf.select(cfg, "evaluate.unseen_landscape_dir", default=None), holdout=True
        )
        size = (int(cfg.resolution), int(cfg.resolution))

        def pictures(index: torch.Tensor) -> torch.Tensor:
            return bank.sample_batch(pair_seed(base_seed, index, "unseen_landscape"), size)

        cut_synthesizer = build_synthesizer(cfg, base_seed=base_seed, augmentation_overrides=cut_on)
        indices = list(range(first, first + unseen))
        sets["unseen_landscape"] = _synthesized(
            cut_synthesizer.to(device), indices, batch_size, device, landscapes=pictures
        )
    return sets


def metric_networks(cfg: DictConfig, device: torch.device) -> tuple[Any, Any]:
    """(ST-LPIPS distance or None, factory of the distribution distances) as the config asks:
    `evaluate.stlpips` (background ST-LPIPS and `kid_stlpips`; needs the stlpips-pytorch
    wheel's weights; off where the config has no such key: it ~doubles to ~quadruples the
    evaluation's time on a CPU, too much for the demo's 10 minutes) and
    `evaluate.inception_weights` (a path: also `fid_inception` / `kid_inception`)."""
    from portrait_toon.evaluation.distribution import (
        DistributionDistance,
        InceptionFeatures,
        STLPIPSFeatures,
    )
    from portrait_toon.nets.perceptual import MissingPerceptualWeightsError, ShiftTolerantLPIPS

    perceptual = None
    if OmegaConf.select(cfg, "evaluate.stlpips", default=False):
        try:
            perceptual = ShiftTolerantLPIPS().to(device)
        except MissingPerceptualWeightsError as error:  # a finished training still reports
            log.warning("evaluate.stlpips: %s; background ST-LPIPS and kid_stlpips skipped", error)
    inception_path = OmegaConf.select(cfg, "evaluate.inception_weights", default=None)
    inception = InceptionFeatures(inception_path).to(device) if inception_path else None

    def make_distributions() -> list[DistributionDistance]:
        distributions = []
        if perceptual is not None:
            distributions.append(DistributionDistance(STLPIPSFeatures(perceptual), "stlpips"))
        if inception is not None:
            distributions.append(DistributionDistance(inception, "inception", fid=True))
        return distributions

    return perceptual, make_distributions


@torch.no_grad()
def evaluate_heldout(
    cfg: DictConfig, net: nn.Module, output_dir: str | Path, steps: int
) -> dict[str, Any]:
    """Metrics of `net` on the held-out pairs -> metrics.json + demo_report.png in output_dir.

    Returns the metrics: the keys of `evaluate_stylizer` on the plain frames, `steps`, and
    the background measures on the CutFace / unseen-landscape pairs under `cutface_` /
    `unseen_landscape_` (evaluation/heldout.py `measure_sets`).
    """
    from portrait_toon.evaluation.heldout import measure_sets
    from portrait_toon.evaluation.report import save_demo_report

    output_dir = Path(output_dir)
    was_training = net.training
    net.eval()
    device = _module_device(net)
    try:
        sets = heldout_sets(cfg, device)
        perceptual, make_distributions = metric_networks(cfg, device)
        metrics = measure_sets(net, sets, perceptual, make_distributions)
        metrics["steps"] = int(steps)
        metrics = json_ready(metrics)
        write_json(output_dir / METRICS_FILE, metrics)
        cut_rows = sets.get("cutface", []) + sets.get("unseen_landscape", [])
        save_demo_report(output_dir / REPORT_FILE, _report_rows(net, sets["plain"], cut_rows))
    finally:
        net.train(was_training)
    log.info(
        "held-out metrics (%d images, step %d): L1(F(x), y) = %.4f vs L1(x, y) = %.4f "
        "(head %.4f vs %.4f, background %.4f vs %.4f); skin dE00 = %.2f -> %s",
        metrics.get("num_images", 0),
        steps,
        *_l1_pairs(metrics),
        _number(metrics.get("skin_delta_e00_mean")),
        output_dir / METRICS_FILE,
    )
    return metrics


def _number(value: Any) -> float:
    """A metric for a log line: None (nothing measured) prints as nan."""
    return float("nan") if value is None else float(value)


def _l1_pairs(metrics: dict[str, Any]) -> list[float]:
    """(output, input) L1 to the target for the whole image, the head and the background."""
    return [
        _number(metrics.get(f"l1_{region}{pair}"))
        for region in ("", "head_", "background_")
        for pair in ("output_target", "input_target")
    ]


def _report_rows(
    net: nn.Module, plain: list[dict[str, torch.Tensor]], cutface: list[dict[str, torch.Tensor]]
) -> list[dict[str, torch.Tensor]]:
    """The batches with F's outputs added (`output`), plain frames first, then CutFace."""
    rows = []
    for batch in plain + cutface:
        rows.append({**batch, "output": net(batch["src"]).clamp(-1, 1)})
    return rows


def export_stylizer(model: nn.Module, path: str | Path) -> Path:
    """Write F_ema as the standalone file stylize.py loads (`ckpt=<run>/stylizer.pt`).

    The training module's own `export_generator` knows its network; the generic writer
    (utils/generator_file.py) is the fallback for modules without one.
    """
    if hasattr(model, "export_generator"):
        return Path(model.export_generator(path))
    from portrait_toon.utils.generator_file import save_stylizer

    ema = model.net_ema
    return save_stylizer(path, getattr(ema, "module", ema))


# --------------------------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """`python evaluate.py`: load F_ema from a run/checkpoint, evaluate, write into this run."""
    from portrait_toon.utils.generator_file import load_stylizer

    config.apply_set_if_present(cfg)
    config.validate(cfg)
    runs_dir = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs"
    output_dir = Path(cfg.paths.output_dir)
    ckpt = Path(str(cfg.ckpt_path))
    if ckpt.is_dir() and (ckpt / STYLIZER_FILE).is_file():
        resolved = str(ckpt / STYLIZER_FILE)
    else:
        resolved = resume.resolve_ckpt_path(cfg.ckpt_path, output_dir, str(runs_dir))
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    net = load_stylizer(resolved, device=device)
    log.info("evaluating %s", resolved)
    steps = checkpoint_step(resolved)
    return evaluate_heldout(cfg, net, output_dir, steps=steps)
