"""`python synthesize.py task=character`: project the character's faces into G_t's W+ and save
the character code w_c (their mean code) that mixer=cdsm renders with (docs/method.md §1.2).

Writes `<character.out_dir>/w_c.pt` (format `portrait_toon.character_code/1`: `w_c`
[n_latent, style_dim], `codes` [k, n_latent, style_dim], `names`, per-image losses, the G_t
file and architecture) and `w_c_reconstructions.png` (one row per face: the face, its
projection, the projection with G_t's stored noise as CDSM renders it).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from portrait_toon import config
from portrait_toon.data.faces import FEW_SHOT_LIMIT, embedded_character_faces, load_face_folder
from portrait_toon.synthesis.mixers import TARGET_HOW_TO_GET
from portrait_toon.synthesis.projection import ProjectionOptions, project
from portrait_toon.synthesis.sources import build_stylegan2, check_arch
from portrait_toon.training.losses import PerceptualConfig, build_perceptual
from portrait_toon.utils.files import atomic_write_bytes, atomic_write_png
from portrait_toon.utils.grid import make_grid, tensor_to_uint8

log = logging.getLogger(__name__)

CODE_FORMAT = "portrait_toon.character_code/1"
CODE_FILE = "w_c.pt"
GRID_FILE = "w_c_reconstructions.png"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_parts(cfg: DictConfig) -> None:
    if "character" not in cfg:
        raise config.ConfigError(
            "task=character needs the `character` config group: add `- character: default` to "
            "the defaults of conf/synthesize.yaml (or pass +character=default)"
        )
    generator_target = str(OmegaConf.select(cfg, "generator._target_", default=""))
    if not generator_target.endswith("StyleGAN2Generator"):
        raise config.ConfigError(
            f"task=character projects into StyleGAN2's W+: it needs generator=stylegan2 "
            f"(its arch is G_t's), got generator._target_={generator_target!r}. "
            "Use e.g. experiment=webtoonme_512."
        )
    if OmegaConf.select(cfg, "mixer.target_checkpoint", default="__absent__") == "__absent__":
        raise config.ConfigError(
            "task=character projects into G_t = mixer.target_checkpoint: pick mixer=cdsm (or "
            "layer_swap), e.g. experiment=webtoonme_512"
        )


def load_faces(character: DictConfig, size: int) -> tuple[torch.Tensor, list[str]]:
    """The character faces as uint8 [k, 3, size, size] and their names (k <= max_images)."""
    if character.image_dir is None:
        count = int(character.num_embedded)
        log.warning(
            "character.image_dir is null: projecting %d embedded-world character faces "
            "(a stand-in; give a folder of your character's faces)",
            count,
        )
        faces = embedded_character_faces(count, size, seed=int(character.embedded_seed))
        names = [f"embedded_{int(character.embedded_seed) + i}" for i in range(count)]
    else:
        faces, names = load_face_folder(
            character.image_dir,
            size,
            box_file=character.box_file,
            box_scale=float(character.box_scale),
            recursive=bool(character.recursive),
        )
    limit = int(character.max_images)
    if len(names) > limit:
        log.warning(
            "%d faces found; the first %d (by name) are used (character.max_images; the method "
            "uses fewer than %d)",
            len(names),
            limit,
            FEW_SHOT_LIMIT,
        )
        faces, names = faces[:limit], names[:limit]
    return faces, names


def project_character(cfg: DictConfig) -> dict[str, Any]:
    """Run the projection as configured; returns the paths written and the mean losses."""
    _check_parts(cfg)
    character = cfg.character
    mixer = cfg.mixer
    arch = check_arch(OmegaConf.to_container(cfg.generator.arch, resolve=True), "generator")
    device = _device(str(OmegaConf.select(cfg, "device", default="auto")))
    generator, latent_avg = build_stylegan2(
        mixer.target_checkpoint,
        weights_dir=mixer.get("weights_dir"),
        arch=arch,
        allow_random_init=bool(mixer.get("allow_random_init", False)),
        init_seed=int(mixer.get("init_seed", 1)),
        what="mixer.target_checkpoint (G_t)",
        how_to_get=TARGET_HOW_TO_GET,
    )
    generator.to(device)
    faces, names = load_faces(character, int(arch["size"]))
    images = faces.float() / 127.5 - 1.0

    perceptual_cfg = OmegaConf.to_container(character.perceptual, resolve=True)
    perceptual = build_perceptual(PerceptualConfig(weight=1.0, **perceptual_cfg))
    if perceptual is not None:
        perceptual.to(device)
    options = ProjectionOptions.from_mapping(
        OmegaConf.to_container(character.projection, resolve=True)
    )
    log.info("projecting %d faces into G_t (%d steps) on %s", len(names), options.steps, device)
    result = project(generator, images, latent_avg.to(device), perceptual, options)

    out_dir = Path(character.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": CODE_FORMAT,
        "w_c": result.w_c,
        "codes": result.codes,
        "names": names,
        "initial_losses": result.initial_losses,
        "final_losses": result.final_losses,
        "loss_history": result.loss_history,
        "target_checkpoint": None
        if mixer.target_checkpoint is None
        else str(mixer.target_checkpoint),
        "arch": arch,
    }
    buffer = io.BytesIO()
    torch.save(record, buffer)
    code_path = atomic_write_bytes(out_dir / CODE_FILE, buffer.getvalue())

    rows = torch.stack(
        [images, result.reconstructions, result.reconstructions_stored_noise], dim=1
    ).flatten(0, 1)
    grid_path = atomic_write_png(out_dir / GRID_FILE, tensor_to_uint8(make_grid(rows, nrow=3)))
    for name, before, after in zip(names, result.initial_losses, result.final_losses):
        log.info("  %s: projection loss %.4f -> %.4f", name, float(before), float(after))
    log.info("wrote %s and %s; train with mixer.character_code=%s", code_path, grid_path, code_path)
    return {
        "code_path": str(code_path),
        "grid_path": str(grid_path),
        "num_images": len(names),
        "initial_loss": float(result.initial_losses.mean()),
        "final_loss": float(result.final_losses.mean()),
    }
