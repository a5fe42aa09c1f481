"""The app task (what `app.py` runs): load a trained F as a `Stylizer`, render a few held-out
frames of the embedded world as examples, and serve the Gradio page (`web/page.py`) on
localhost until Ctrl-C.

`start(cfg)` returns the running page without blocking (tests drive it in-process);
`serve(cfg)` starts it and waits.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from portrait_toon.config import ConfigError

logger = logging.getLogger(__name__)

USAGE = "python app.py [ckpt=PATH/stylizer.pt] [port=7860]"
EXAMPLES_FOLDER = "examples"


@dataclass
class RunningApp:
    """A served page: its Gradio Blocks, its URL, the stylizer behind it and the folder its
    latest result is written to."""

    page: Any
    url: str
    stylizer: Any
    results_dir: Path

    def close(self) -> None:
        self.page.close()
        shutil.rmtree(self.results_dir, ignore_errors=True)


def serve(cfg: DictConfig) -> None:
    """Serve the page until interrupted (Ctrl-C)."""
    app = start(cfg)
    logger.info("serving %s (Ctrl-C stops)", app.url)
    try:
        app.page.block_thread()
    finally:
        app.close()


def start(cfg: DictConfig) -> RunningApp:
    """Load the stylizer, write the examples and launch the page; returns without blocking."""
    import gradio as gr

    from portrait_toon.web import model_card
    from portrait_toon.web.examples import write_examples
    from portrait_toon.web.handler import StylizeHandler
    from portrait_toon.web.page import CSS, build_page, theme

    output_dir = Path(str(cfg.paths.output_dir))
    tile_choice = page_tile_choice(cfg.tile)
    stylizer = load(cfg)
    logger.info("model: %s", stylizer.info.get("source"))
    world, indices = world_frames(cfg)
    examples = write_examples(
        output_dir / EXAMPLES_FOLDER,
        list(cfg.examples.builtin or []),
        world,
        world_indices=indices,
    )
    # the latest result (served by Gradio from its own copy); a temp folder, removed on close
    results_dir = Path(tempfile.mkdtemp(prefix="portrait_toon_app_"))
    handler = StylizeHandler(
        stylizer,
        results_dir=results_dir,
        max_pixels=int(cfg.max_pixels),
        notify=lambda message: gr.Info(message, duration=4),
    )
    page = build_page(
        handler,
        summary=model_card.summary(stylizer.info),
        details=model_card.details(stylizer.info),
        examples=examples,
        default_tile=tile_choice,
        max_queue=int(cfg.max_queue),
    )
    try:
        page.launch(
            server_name=str(cfg.host),
            server_port=int(cfg.port),
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            show_error=False,
            theme=theme(),
            css=CSS,
            allowed_paths=[str(output_dir / EXAMPLES_FOLDER)],
            max_file_size=f"{int(cfg.max_file_size_mb)}mb",
            footer_links=["api"],
        )
    except OSError as error:
        page.close()
        shutil.rmtree(results_dir, ignore_errors=True)
        raise ConfigError(
            f"host={cfg.host} port={cfg.port}: cannot serve there ({error}); pick a free port, "
            "e.g. port=7861"
        ) from None
    url = f"http://{cfg.host}:{page.server_port}/"
    return RunningApp(page=page, url=url, stylizer=stylizer, results_dir=results_dir)


def page_tile_choice(tile: Any) -> str:
    """The config's `tile` (auto, null or a side in px) as the page's default tile choice."""
    from portrait_toon.web.handler import parse_tile

    choice = "one pass" if tile is None else str(tile)
    try:
        parse_tile(choice)
    except ValueError:
        raise ConfigError(
            f"tile={tile}: give auto, null (one pass) or a tile side in pixels (e.g. 1024)"
        ) from None
    return choice


def load(cfg: DictConfig) -> Any:
    """The `Stylizer` of `cfg.ckpt` (or of the newest trained run under paths.log_dir)."""
    from portrait_toon.inference.stylizer import Stylizer
    from portrait_toon.utils.generator_file import StylizerLoadError

    ckpt = default_checkpoint(cfg) if cfg.get("ckpt") in (None, "") else str(cfg.ckpt)
    try:
        return Stylizer.load(
            ckpt,
            device=str(cfg.device),
            tile="auto",
            max_memory_mb=cfg.max_memory_mb,
            precision=str(cfg.precision),
        )
    except FileNotFoundError as error:
        raise ConfigError(f"ckpt={ckpt}: {error}. Usage: {USAGE}") from None
    except (StylizerLoadError, ValueError) as error:
        raise ConfigError(f"ckpt={ckpt} device={cfg.device}: {error}") from None


def default_checkpoint(cfg: DictConfig) -> str:
    """The newest stylizer file (else Lightning checkpoint) under `paths.log_dir`."""
    from portrait_toon.inference.stylizer import resolve_checkpoint

    log_dir = Path(str(cfg.paths.log_dir))
    try:
        found = resolve_checkpoint(log_dir)
    except FileNotFoundError:
        raise ConfigError(
            f"ckpt=null: no trained stylizer under {log_dir} (looked for stylizer.pt, "
            "stylizer.safetensors and *.ckpt in all its subfolders); train the demo model "
            "first with `make demo` (about 10 minutes on a CPU), or give one: "
            "python app.py ckpt=PATH/stylizer.pt"
        ) from None
    logger.info("ckpt=null: the newest trained stylizer under %s is %s", log_dir, found)
    return str(found)


def world_frames(cfg: DictConfig) -> tuple[list[np.ndarray], list[int]]:
    """Held-out frames (uint8 [H, W, 3]) of the embedded world and their pair indices.

    The pairs' indices start at `examples.index_base`, far beyond any training index, rendered
    as the held-out evaluation makes them (no crop, no CutFace)."""
    from portrait_toon.data.images import to_uint8
    from portrait_toon.tasks.synthesize import build_synthesizer

    count = int(cfg.examples.world_frames or 0)
    if count <= 0:
        return [], []
    first = int(cfg.examples.index_base)
    indices = list(range(first, first + count))
    synthesizer = build_synthesizer(
        cfg,
        base_seed=int(cfg.examples.base_seed),
        augmentation_overrides={"crop": {"enabled": False}, "cutface": {"p": 0.0}},
    )
    with torch.no_grad():
        photos = synthesizer(torch.tensor(indices, dtype=torch.int64))["src"]
    return [to_uint8(photo[None]) for photo in photos], indices
