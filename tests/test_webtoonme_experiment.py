"""experiment=webtoonme_512 (the real networks): a clear missing-weights error without the files,
tiny random real architectures under debug=tiny, previews, and pairs that are a pure function of
their index (twice in a process, across shard workers, across processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from portrait_toon import config
from portrait_toon.checkpoints import MissingWeightsError
from portrait_toon.data import shards as shard_io
from portrait_toon.synthesis.mixers import CDSMMixer
from portrait_toon.synthesis.segmenters import BiSeNetSegmenter
from portrait_toon.synthesis.sources import AnimeGANBackground, StyleGAN2Generator
from portrait_toon.tasks.synthesize import build_synthesizer, synthesize

TINY_REAL = ["experiment=webtoonme_512", "debug=tiny", "device=cpu"]


def compose(tmp_path, *overrides: str, name: str = "synthesize"):
    cfg = config.compose_config(name, list(overrides), tmp_path / "run")
    config.apply_set_if_present(cfg)
    return cfg


def test_without_weights_the_error_names_the_file_and_make_weights(tmp_path):
    cfg = compose(tmp_path, "experiment=webtoonme_512", f"paths.weights_dir={tmp_path}")
    with pytest.raises(Exception) as error:  # Hydra wraps the constructor's error
        build_synthesizer(cfg, base_seed=0)
    cause = error.value
    while not isinstance(cause, MissingWeightsError) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, MissingWeightsError), repr(error.value)
    assert "stylegan2-ffhq-config-f.pt" in str(cause) and "make weights" in str(cause)


def test_experiment_is_the_paper_setting(tmp_path):
    cfg = compose(tmp_path, "experiment=webtoonme_512", name="train")
    assert cfg.resolution == 512 and cfg.generator.arch.size == 1024
    assert cfg.mixer.mixing_level == 6 and cfg.mixer.swap_resolution == 32
    assert cfg.mixer.replace_torgb and cfg.segmenter.parse_size == 512
    assert cfg.augmentation.cutface.p == pytest.approx(0.3)
    assert cfg.augmentation.color_reflection.enabled
    # the mixer renders from the generator group's network (same file, same arch)
    assert cfg.mixer.source.checkpoint == cfg.generator.checkpoint


def test_debug_tiny_builds_the_real_architectures_tiny_and_random(tmp_path, caplog):
    cfg = compose(tmp_path, *TINY_REAL, f"paths.weights_dir={tmp_path}")
    synthesizer = build_synthesizer(cfg, base_seed=0)
    assert isinstance(synthesizer.generator, StyleGAN2Generator)
    assert isinstance(synthesizer.mixer, CDSMMixer)
    assert isinstance(synthesizer.segmenter, BiSeNetSegmenter)
    assert isinstance(synthesizer.bg_stylizer, AnimeGANBackground)
    assert synthesizer.generator.generator.size == 32
    assert caplog.text.count("RANDOMLY INITIALISED") >= 4  # G_s, G_t, parser, AnimeGAN
    # the mixer's copy of G_s is the source's G_s below r_swap, however both were built
    g_s = synthesizer.generator.generator.state_dict()
    renderer = synthesizer.mixer.renderer.state_dict()
    assert torch.equal(renderer["conv1.conv.weight"], g_s["conv1.conv.weight"])
    pairs = synthesizer(torch.arange(2), return_stages=True)
    assert pairs["src"].shape == (2, 3, 32, 32) and pairs["labels"].shape == (2, 32, 32)


def test_same_index_same_pair_twice_in_a_process(tmp_path):
    cfg = compose(tmp_path, *TINY_REAL)
    index = torch.tensor([4, 9])
    first = build_synthesizer(cfg, base_seed=3)(index)
    second = build_synthesizer(cfg, base_seed=3)(torch.tensor([9, 4]))
    for key in ("src", "tgt", "head_mask"):
        assert torch.equal(first[key], second[key].flip(0)), key
    assert not torch.equal(first["src"][0], first["src"][1])


def test_preview_of_the_experiment_under_debug_tiny(tmp_path):
    from portrait_toon.data.images import read_image

    cfg = compose(tmp_path, *TINY_REAL, "task=preview")
    summary = synthesize(cfg)
    assert len(summary["files"]) == 10  # every stage, the overview and the CutFace pairs
    overview = read_image(tmp_path / "run" / "preview" / "00_overview.png")
    assert overview.shape[0] == 2 * 32 + 2  # two seeds (debug=tiny), 32 px rows


@pytest.mark.parametrize("mixer", ["cdsm", "layer_swap"])
def test_preview_with_tiny_random_real_parts(tmp_path, mixer):
    """`make preview generator=stylegan2 mixer=... segmenter=bisenet debug=tiny`."""
    from portrait_toon.data.images import read_image

    overrides = ("generator=stylegan2", f"mixer={mixer}", "segmenter=bisenet")
    cfg = compose(tmp_path, "task=preview", "debug=tiny", "device=cpu", *overrides)
    summary = synthesize(cfg)
    assert len(summary["files"]) == 10  # every stage, the overview and the CutFace pairs
    photo = read_image(tmp_path / "run" / "preview" / "01_source.png")
    character = read_image(tmp_path / "run" / "preview" / "04_character.png")
    assert photo.shape == character.shape == (2 * 32 + 2, 32, 3)  # two seeds at 32 px
    assert not (photo == character).all()  # the mixer changed the picture


def shards_of(root) -> dict[str, torch.Tensor]:
    files = sorted(root.glob("shard_*.pt"))
    return shard_io.concat_pairs([shard_io.read_shard(f, mmap=False) for f in files])


def test_shard_workers_write_the_pairs_of_a_single_run(tmp_path):
    small = (*TINY_REAL, "num_pairs=4", "shard_size=2", "batch_size=2")
    single = tmp_path / "single"
    synthesize(compose(tmp_path, *small, f"out_dir={single}"))
    split = tmp_path / "split"
    for worker in (1, 0):
        overrides = (f"out_dir={split}", f"worker={worker}", "num_workers=2")
        assert synthesize(compose(tmp_path, *small, *overrides))["written"] == 1
    expected, got = shards_of(single), shards_of(split)
    assert got["index"].tolist() == list(range(4))
    for key in shard_io.SHARD_KEYS:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.slow
def test_two_processes_write_the_same_pairs_as_one(tmp_path):
    """Two OS processes, each a shard worker, against one in-process run (slow: two fresh
    interpreters import torch and Hydra; the in-process variant above runs by default)."""
    script = textwrap.dedent(
        """
        import sys
        from portrait_toon import config
        from portrait_toon.tasks.synthesize import synthesize
        out, run, worker = sys.argv[1:4]
        cfg = config.compose_config("synthesize", ["experiment=webtoonme_512", "debug=tiny",
            "device=cpu", "out_dir=" + out, "worker=" + worker, "num_workers=2"], run)
        config.apply_set_if_present(cfg)
        synthesize(cfg)
        """
    )
    split = tmp_path / "split"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(split), str(tmp_path / f"run{w}"), str(w)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (0, 1)
    ]
    for process in workers:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    single = tmp_path / "single"
    synthesize(compose(tmp_path, *TINY_REAL, f"out_dir={single}"))
    expected, got = shards_of(single), shards_of(split)
    for key in shard_io.SHARD_KEYS:
        assert torch.equal(got[key], expected[key]), key


def test_train_runs_under_debug_tiny(tmp_path):
    from portrait_toon.tasks.train import train

    cfg = config.compose_config(
        "train", ["experiment=webtoonme_512", "debug=tiny", "logger=none"], tmp_path / "run"
    )
    metrics = train(cfg)
    assert metrics["num_images"] == 4
    assert (tmp_path / "run" / "stylizer.pt").is_file()
