"""The README's "Your own character" recipe chains: the commands it prints, run in order on a
CPU at tiny size, each reading the files the one before wrote (fine-tune G_t -> character code
w_c -> the stylizer F trained with both -> stylize with it).

The commands are read from the README. To run them here at tiny size the test adds
`debug=tiny` and replaces `trainer=gpu` by `trainer=cpu`; `/data/my_character` is a folder of
embedded-world character faces. debug=tiny nulls the chain's file keys (a real G_t in
weights/ would not fit its tiny networks), so each step gets them back explicitly, with the
values the README's command composes to at full size, and with random-init fall-backs off: a
step that does not find the previous step's file fails. The tiny G_t gets the architecture the
later steps expect (`generator.arch`), which at full size is the same network (checked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from doc_commands import REPO_ROOT, DocCommand, make_targets, markdown_commands, substitute
from PIL import Image

from portrait_toon import config
from portrait_toon.data.faces import embedded_character_faces

RUN = "recipe_run"
ARCH_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_max")


def recipe_commands() -> list[DocCommand]:
    """The commands of the fenced block(s) in the README section "Your own character"."""
    readme = REPO_ROOT / "README.md"
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("## Your own character"))
    end = next(
        (i for i, line in enumerate(lines, 1) if i > start and line.startswith("## ")), len(lines)
    )
    # inline spans in the prose below repeat parts of the block; the block is the recipe
    return [c for c in markdown_commands(readme) if start < c.line < end and c.source == "block"]


def script_and_overrides(command: DocCommand, root: Path) -> tuple[str, list[str]]:
    words = list(command.words)
    if command.program == "make":
        target = make_targets()[words.pop(0)]
        script, words = target.script, [*target.fixed, *words]
    else:
        script = words.pop(0)
    fixtures = {"root": str(root), "run": RUN}
    return script, [substitute(w, fixtures) for w in words]


def tiny(overrides: list[str]) -> list[str]:
    return [("trainer=cpu" if w == "trainer=gpu" else w) for w in overrides] + ["debug=tiny"]


def compose(name: str, overrides: list[str], output_dir: Path | None = None):
    return config.compose_config(name, overrides, output_dir)


def test_readme_character_recipe_chains_end_to_end_at_tiny_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's relative paths (weights/, photos/, logs/)
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    commands = recipe_commands()
    steps = [script_and_overrides(c, tmp_path) for c in commands]
    assert [s for s, _ in steps] == ["train.py", "synthesize.py", "train.py", "stylize.py"], [
        c.text for c in commands
    ]
    (finetune, finetune_args), (_, code_args), (_, stylizer_args), (_, stylize_args) = steps
    faces = tmp_path / "data" / "my_character"
    faces.mkdir(parents=True)
    for i, face in enumerate(embedded_character_faces(4, 64, seed=3)):
        Image.fromarray(face.permute(1, 2, 0).numpy()).save(faces / f"face_{i}.png")
    assert (
        f"data.image_dir={faces}" in finetune_args and f"character.image_dir={faces}" in code_args
    )

    # at full size, the files chain by name and G_t has the architecture the later steps use
    full = [compose("train", finetune_args), compose("synthesize", code_args)]
    full.append(compose("train", stylizer_args))
    weights = Path(full[0].paths.weights_dir)
    g_t = Path(full[0].model.export_path)
    assert g_t.resolve() == (weights / full[1].mixer.target_checkpoint).resolve()
    assert full[1].mixer.target_checkpoint == full[2].mixer.target_checkpoint
    w_c = Path(full[1].character.out_dir) / "w_c.pt"
    assert w_c.resolve() == (weights / full[2].mixer.character_code).resolve()
    arch = {k: full[1].generator.arch[k] for k in ARCH_KEYS}
    assert {k: full[0].model.generator[k] for k in ARCH_KEYS} == arch
    assert {k: full[2].generator.arch[k] for k in ARCH_KEYS} == arch

    from portrait_toon.tasks.stylize import stylize
    from portrait_toon.tasks.synthesize import synthesize
    from portrait_toon.tasks.train import train

    # 1. G_t: the tiny fine-tune writes weights/G_t.pt
    tiny_code_cfg = compose("synthesize", tiny(code_args))
    config.apply_set_if_present(tiny_code_cfg)  # what debug=tiny makes of the later steps
    tiny_arch = tiny_code_cfg.generator.arch
    same_arch = [f"model.generator.{k}={tiny_arch[k]}" for k in ARCH_KEYS if k != "size"]
    train(compose("train", [*tiny(finetune_args), *same_arch, "logger=csv"], tmp_path / "run1"))
    assert g_t.is_file()

    # 2. w_c: projects the faces into that G_t, writes weights/w_c.pt
    files = [f"mixer.target_checkpoint={full[1].mixer.target_checkpoint}"]
    strict = ["mixer.allow_random_init=false"]
    result = synthesize(
        compose("synthesize", [*tiny(code_args), *files, *strict], tmp_path / "run2")
    )
    assert Path(result["code_path"]).resolve() == w_c.resolve()
    record = torch.load(w_c, map_location="cpu", weights_only=True)
    assert record["target_checkpoint"] == full[1].mixer.target_checkpoint
    assert record["w_c"].shape[-1] == tiny_arch.style_dim and len(record["names"]) == 4

    # 3. the stylizer F, trained on pairs whose heads G_t renders with w_c
    files.append(f"mixer.character_code={full[2].mixer.character_code}")
    strict.append("mixer.allow_latent_avg_code=false")
    run = tmp_path / "logs" / "webtoonme_512" / "runs" / RUN
    cfg = compose(
        "train",
        [*tiny(stylizer_args), *files, *strict, "logger=csv", "evaluate.enabled=false"],
        run,
    )
    train(cfg)
    assert (run / "stylizer.pt").is_file()

    # 4. stylize photos with the run's stylizer.pt
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(photos / "me.png")
    assert f"ckpt={run.relative_to(tmp_path)}/stylizer.pt" in stylize_args
    stylize(compose("stylize", stylize_args, tmp_path / "run4"))
    assert (tmp_path / "out" / "me.png").is_file()
