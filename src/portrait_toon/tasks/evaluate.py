"""Held-out evaluation of F: metrics.json and demo_report.png from pairs no training step saw.

Used after training (tasks/train.py) and on its own (`python evaluate.py ckpt_path=RUN`).
Held-out pairs are indices `evaluate.index_base + i` (far beyond any training index), made
with the run's synthesis config but without the random crop, so the report shows whole
frames; CutFace pairs are made apart (CutFace forced on) so the report has landscape rows and
the plain rows stay plain.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from portrait_toon import config
from portrait_toon.tasks.synthesize import build_synthesizer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "demo_report.png"
STYLIZER_FILE = "stylizer.pt"


def _module_device(net: nn.Module) -> torch.device:
    for tensor in list(net.parameters()) + list(net.buffers()):
        return tensor.device
    return torch.device("cpu")


def heldout_batches(
    cfg: DictConfig, device: torch.device, *, cutface: bool
) -> list[dict[str, torch.Tensor]]:
    """Held-out pairs in batches: plain frames, or CutFace pairs (right after the plain ones)."""
    ev = cfg.evaluate
    count = int(ev.num_cutface) if cutface else int(ev.num_images)
    if count <= 0:
        return []
    first = int(ev.index_base) + (int(ev.num_images) if cutface else 0)
    overrides: dict[str, Any] = {"crop": {"enabled": False}}
    overrides["cutface"] = {"enabled": True, "p": 1.0} if cutface else {"p": 0.0}
    synthesizer = build_synthesizer(
        cfg, base_seed=int(ev.base_seed), augmentation_overrides=overrides
    ).to(device)
    batch_size = int(ev.batch_size)
    batches = []
    for start in range(first, first + count, batch_size):
        index = torch.arange(start, min(start + batch_size, first + count), dtype=torch.int64)
        with torch.no_grad():
            # stages too: `background` = B(x), what the background metric compares F(x) with
            batches.append(synthesizer(index.to(device), None, True))
    return batches


def _json_ready(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (a reader never sees half a file)."""
    from portrait_toon.utils.files import atomic_write_bytes

    text = json.dumps(_json_ready(data), indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


@torch.no_grad()
def evaluate_heldout(
    cfg: DictConfig, net: nn.Module, output_dir: str | Path, steps: int
) -> dict[str, Any]:
    """Metrics of `net` on the held-out pairs -> metrics.json + demo_report.png in output_dir.

    Returns the metrics: the keys of `evaluate_stylizer` on the plain frames, `steps`, and
    the same measures on the CutFace pairs under a `cutface_` prefix.
    """
    from portrait_toon.evaluation.metrics import evaluate_stylizer
    from portrait_toon.evaluation.report import save_demo_report

    output_dir = Path(output_dir)
    was_training = net.training
    net.eval()
    device = _module_device(net)
    try:
        plain = heldout_batches(cfg, device, cutface=False)
        cutface = (
            heldout_batches(cfg, device, cutface=True)
            if OmegaConf.select(cfg, "augmentation.cutface.enabled", default=False)
            else []
        )
        metrics: dict[str, Any] = dict(evaluate_stylizer(net, plain))
        if cutface:
            cut_metrics = evaluate_stylizer(net, cutface)
            for key in ("l1_output_target", "l1_input_target", "background_delta_e00_mean"):
                if key in cut_metrics:
                    metrics[f"cutface_{key}"] = cut_metrics[key]
        metrics["steps"] = int(steps)
        metrics = _json_ready(metrics)
        write_json(output_dir / METRICS_FILE, metrics)
        save_demo_report(output_dir / REPORT_FILE, _report_rows(net, plain, cutface))
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
        resolved = config.resolve_ckpt_path(cfg.ckpt_path, output_dir, str(runs_dir))
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    net = load_stylizer(resolved, device=device)
    log.info("evaluating %s", resolved)
    steps = _checkpoint_step(resolved)
    return evaluate_heldout(cfg, net, output_dir, steps=steps)


def _checkpoint_step(path: str) -> int:
    """The training step a checkpoint or stylizer file records (0 when unknown)."""
    from portrait_toon.checkpoints import load_state_dict_file

    try:
        content = load_state_dict_file(path)
    except Exception:  # noqa: BLE001 - only for the report; loading itself already succeeded
        return 0
    if "global_step" in content:  # Lightning checkpoint
        return int(content["global_step"])
    for key in ("meta", "metadata"):  # stylizer/generator export files
        metadata = content.get(key)
        if isinstance(metadata, dict) and "global_step" in metadata:
            return int(metadata["global_step"])
    return 0
