"""`python synthesize.py`: write synthetic pairs to resumable shards, or preview every stage.

task=shards   pairs [index_start, index_start + num_pairs) into `out_dir` (one process may
              write a block of shards: worker=i num_workers=n); a rerun skips finished shards.
task=preview  one PNG grid per synthesis stage for a few seeds (make preview).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from portrait_toon import config
from portrait_toon.data import shards as shard_io

log = logging.getLogger(__name__)

# the pipeline's part of the config: what a shard folder's pairs depend on
SYNTHESIS_KEYS: tuple[str, ...] = ("generator", "mixer", "segmenter", "bg_stylizer", "augmentation")

# preview file name -> stage keys of PairSynthesizer(return_stages=True), left to right
PREVIEW_STAGES: dict[str, tuple[str, ...]] = {
    "01_source": ("photo",),
    "02_labels": ("labels",),
    "03_head_mask": ("stage_head_mask", "stage_skin_mask"),
    "04_character": ("character",),
    "05_background_stylized": ("background",),
    "06_composite": ("composite",),
    "07_color_corrected": ("corrected",),
    "08_training_pair": ("src", "tgt"),
}

# face-parsing class colours (CelebAMask-HQ order) for the label previews
LABEL_PALETTE = np.array(
    [
        [0, 0, 0],  # 0 background
        [255, 204, 153],  # 1 skin
        [102, 51, 0],  # 2 l_brow
        [153, 76, 0],  # 3 r_brow
        [0, 102, 255],  # 4 l_eye
        [0, 153, 255],  # 5 r_eye
        [204, 204, 204],  # 6 eye_g
        [255, 153, 204],  # 7 l_ear
        [255, 102, 178],  # 8 r_ear
        [255, 255, 0],  # 9 ear_r
        [255, 128, 0],  # 10 nose
        [204, 0, 0],  # 11 mouth
        [255, 51, 51],  # 12 u_lip
        [153, 0, 0],  # 13 l_lip
        [204, 153, 102],  # 14 neck
        [0, 204, 204],  # 15 neck_l
        [51, 153, 51],  # 16 cloth
        [128, 0, 255],  # 17 hair
        [255, 0, 255],  # 18 hat
    ],
    dtype=np.uint8,
)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def build_synthesizer(
    cfg: DictConfig,
    *,
    base_seed: int,
    augmentation_overrides: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """A `PairSynthesizer` from the config's parts (generator ... augmentation, resolution).

    `augmentation_overrides` patches the augmentation dicts (e.g. crop off for evaluation)
    without touching `cfg`.
    """
    from portrait_toon.synthesis.pipeline import PairSynthesizer

    augmentation = OmegaConf.to_container(cfg.augmentation, resolve=True)
    if augmentation_overrides:
        augmentation = _merge(augmentation, augmentation_overrides)
    synthesizer = PairSynthesizer(
        instantiate(cfg.generator),
        instantiate(cfg.mixer),
        instantiate(cfg.segmenter),
        instantiate(cfg.bg_stylizer),
        resolution=int(cfg.resolution),
        base_seed=int(base_seed),
        **augmentation,
    )
    return synthesizer.eval()


def synthesis_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config that decides the pairs (for the shard manifest)."""
    fingerprint = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in SYNTHESIS_KEYS}
    fingerprint["resolution"] = int(cfg.resolution)
    fingerprint["base_seed"] = int(cfg.base_seed)
    return fingerprint


def synthesize(cfg: DictConfig) -> dict[str, Any]:
    """Run the task `cfg.task` names; returns a summary (paths, counts)."""
    config.apply_set_if_present(cfg)  # debug=tiny shrinks, as in train()
    config.validate(cfg)
    task = str(cfg.task)
    if task == "shards":
        return write_shards(cfg)
    if task == "preview":
        return write_preview(cfg)
    if task == "character":
        return _character(cfg)
    raise config.ConfigError(f"task={task!r} is unknown; choose one of: shards, preview, character")


def _character(cfg: DictConfig) -> dict[str, Any]:
    """task=character: project the character faces into G_t (tasks/character.py)."""
    try:
        from portrait_toon.tasks.character import project_character
    except ImportError as error:
        raise config.ConfigError(
            "task=character (projecting the character images into G_t to form w_c) is not "
            f"available in this installation ({error}). Use task=shards or task=preview."
        ) from error
    if "character" not in cfg:
        raise config.ConfigError(
            "task=character needs the `character` config group: add `+character=default` "
            "(see conf/character/default.yaml)"
        )
    return project_character(cfg)


def write_shards(cfg: DictConfig) -> dict[str, Any]:
    """Write this worker's shards of the pair range into `cfg.out_dir` (resumable)."""
    from tqdm.auto import tqdm

    root = Path(cfg.out_dir)
    num_pairs, shard_size = int(cfg.num_pairs), int(cfg.shard_size)
    total = shard_io.num_shards(num_pairs, shard_size)
    mine = shard_io.shard_range(total, int(cfg.worker), int(cfg.num_workers))
    manifest = {
        "format": shard_io.FORMAT,
        "num_pairs": num_pairs,
        "index_start": int(cfg.index_start),
        "shard_size": shard_size,
        "num_shards": total,
        "resolution": int(cfg.resolution),
        "base_seed": int(cfg.base_seed),
        "keys": list(shard_io.SHARD_KEYS),
        "config": synthesis_fingerprint(cfg),
    }
    shard_io.write_manifest(root, manifest)
    for stale in shard_io.stale_temp_files(root, mine):
        # left by an interrupted run of this worker's shards: never counted, safe to drop
        log.info("removing unfinished %s", stale.name)
        stale.unlink(missing_ok=True)
    done = shard_io.finished_shards(root)
    todo = [s for s in mine if s not in done]
    if not todo:
        log.info("%s: shards %s already complete", root, mine)
        return {"out_dir": str(root), "written": 0, "skipped": len(mine), "shards": list(mine)}

    device = _device(str(cfg.device))
    # CutFace landscapes: the synthesizer draws each pair's own (same as the training loader)
    synthesizer = build_synthesizer(cfg, base_seed=int(cfg.base_seed)).to(device)
    pair_count = sum(
        len(shard_io.shard_indices(s, shard_size, num_pairs, int(cfg.index_start))) for s in todo
    )
    log.info(
        "writing %d shards (%d pairs) to %s on %s; %d already done",
        len(todo),
        pair_count,
        root,
        device,
        len(mine) - len(todo),
    )
    started = time.perf_counter()
    with tqdm(total=pair_count, unit="pair", desc="synthesize", disable=None) as progress:
        for shard_id in todo:
            indices = shard_io.shard_indices(shard_id, shard_size, num_pairs, int(cfg.index_start))
            chunks = []
            for first in range(0, len(indices), int(cfg.batch_size)):
                index = torch.tensor(indices[first : first + int(cfg.batch_size)])
                with torch.no_grad():
                    pairs = synthesizer(index.to(device))
                chunks.append(shard_io.encode_pairs(pairs))
                progress.update(len(index))
            shard_io.write_shard(root, shard_id, shard_io.concat_pairs(chunks), indices)
    seconds = time.perf_counter() - started
    log.info("%d pairs in %.1f s (%.1f pairs/s)", pair_count, seconds, pair_count / seconds)
    return {
        "out_dir": str(root),
        "written": len(todo),
        "skipped": len(mine) - len(todo),
        "shards": list(mine),
        "pairs_per_second": pair_count / seconds,
    }


# --------------------------------------------------------------------------------------------
# preview
def colorize_labels(labels: torch.Tensor) -> torch.Tensor:
    """int64 label maps [B,H,W] -> [-1, 1] RGB [B,3,H,W] in the face-parsing palette."""
    palette = torch.from_numpy(LABEL_PALETTE).to(labels.device)
    clipped = labels.clamp(0, len(LABEL_PALETTE) - 1)
    return palette[clipped].permute(0, 3, 1, 2).float() / 127.5 - 1


def _as_rgb(stage: torch.Tensor) -> torch.Tensor:
    """Any stage tensor -> [-1, 1] RGB [B,3,H,W] (labels coloured, masks grey)."""
    if stage.dtype in (torch.int64, torch.int32, torch.uint8) and stage.dim() == 3:
        return colorize_labels(stage.long())
    stage = stage.float()
    if stage.dim() == 4 and stage.shape[1] == 1:  # mask in [0, 1]
        return stage.expand(-1, 3, -1, -1) * 2 - 1
    return stage


def stage_grid(columns: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Rows = seeds, columns = the given stages: uint8 HWC (white padding)."""
    from portrait_toon.data.images import to_uint8

    rgb = [_as_rgb(column).detach().cpu() for column in columns]
    batch, _, height, width = rgb[0].shape
    rows = []
    for b in range(batch):
        tiles = [column[b] for column in rgb]
        row = torch.ones(3, height, len(tiles) * (width + pad) - pad)
        for i, tile in enumerate(tiles):
            row[:, :, i * (width + pad) : i * (width + pad) + width] = tile
        rows.append(row)
    grid = torch.ones(3, batch * (height + pad) - pad, rows[0].shape[-1])
    for b, row in enumerate(rows):
        grid[:, b * (height + pad) : b * (height + pad) + height] = row
    return to_uint8(grid.unsqueeze(0))


def write_preview(cfg: DictConfig) -> dict[str, Any]:
    """One PNG per stage (rows = seeds) plus CutFace pairs, into `cfg.preview.out_dir`."""
    from portrait_toon.data.images import write_image

    out_dir = Path(cfg.preview.out_dir)
    device = _device(str(cfg.device))
    index = torch.arange(int(cfg.preview.num_images), dtype=torch.int64) + int(cfg.index_start)
    written: list[str] = []

    synthesizer = build_synthesizer(
        cfg, base_seed=int(cfg.base_seed), augmentation_overrides={"cutface": {"p": 0.0}}
    ).to(device)
    with torch.no_grad():
        stages = synthesizer(index.to(device), None, True)
    for name, keys in PREVIEW_STAGES.items():
        path = out_dir / f"{name}.png"
        write_image(path, stage_grid([stages[k] for k in keys]), overwrite=True)
        written.append(str(path))
    # every stage side by side (columns in pipeline order), one row per seed
    overview = [stages[k] for keys in PREVIEW_STAGES.values() for k in keys]
    path = out_dir / "00_overview.png"
    write_image(path, stage_grid(overview), overwrite=True)
    written.append(str(path))

    if OmegaConf.select(cfg, "augmentation.cutface.enabled", default=False):
        cutface = build_synthesizer(
            cfg, base_seed=int(cfg.base_seed), augmentation_overrides={"cutface": {"p": 1.0}}
        ).to(device)
        with torch.no_grad():
            pairs = cutface(index.to(device))
        path = out_dir / "09_cutface_pair.png"
        write_image(
            path, stage_grid([pairs["src"], pairs["tgt"], pairs["head_mask"]]), overwrite=True
        )
        written.append(str(path))
    else:
        log.info("CutFace is off (augmentation.cutface.enabled=false): no CutFace preview")
    log.info("preview of %d seeds: %s", len(index), out_dir)
    return {"out_dir": str(out_dir), "files": written}
