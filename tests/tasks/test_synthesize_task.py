"""synthesize.py in-process: resumable shards (crash, rerun, workers), previews, task errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from portrait_toon import config
from portrait_toon.data import shards as shard_io
from portrait_toon.data.datamodule import ShardsDataModule
from portrait_toon.tasks import synthesize as task


@pytest.fixture
def compose(tmp_path):
    def _compose(*overrides):
        cfg = config.compose_config(
            "synthesize",
            ["debug=tiny", f"out_dir={tmp_path / 'pairs'}", "device=cpu", *overrides],
            tmp_path / "run",
        )
        config.apply_set_if_present(cfg)
        return cfg

    return _compose


def test_shards_resume_after_a_crash_with_nothing_lost_or_duplicated(
    compose, tmp_path, monkeypatch
):
    cfg = compose()  # debug=tiny: 6 pairs in shards of 4 -> shards 0 (4 pairs) and 1 (2 pairs)
    root = tmp_path / "pairs"
    real_write = shard_io.write_shard

    def crash_on_second_shard(root_dir, shard_id, encoded, expected=None):
        if shard_id == 1:
            (root_dir / "shard_000001.pt.tmp-999-dead").write_bytes(b"half a shard")
            raise KeyboardInterrupt  # killed while writing shard 1
        return real_write(root_dir, shard_id, encoded, expected)

    monkeypatch.setattr(shard_io, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        task.synthesize(cfg)
    assert shard_io.finished_shards(root) == {0}
    first_shard = shard_io.read_shard(root / "shard_000000.pt", mmap=False)

    monkeypatch.setattr(shard_io, "write_shard", real_write)
    summary = task.synthesize(compose())
    assert summary["written"] == 1 and summary["skipped"] == 1
    assert shard_io.finished_shards(root) == {0, 1}
    assert not list(root.glob("*.tmp-*"))  # the leftover of the killed write is gone
    indices = [
        i
        for s in (0, 1)
        for i in shard_io.read_shard(root / shard_io.shard_name(s))["index"].tolist()
    ]
    assert indices == list(range(6))  # each pair exactly once
    # the finished shard was not rewritten, and a rerun reproduces it bit for bit
    again = shard_io.read_shard(root / "shard_000000.pt", mmap=False)
    assert torch.equal(again["src"], first_shard["src"])
    assert task.synthesize(compose())["written"] == 0

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["num_pairs"] == 6 and manifest["shard_size"] == 4
    assert manifest["config"]["resolution"] == 32
    assert manifest["config"]["augmentation"]["cutface"]["p"] == pytest.approx(0.3)


def test_workers_split_the_shards_and_the_folder_trains(compose, tmp_path):
    for worker in (1, 0):
        summary = task.synthesize(compose("worker=" + str(worker), "num_workers=2"))
        assert summary["written"] == 1
        assert summary["shards"] == [worker]
    dm = ShardsDataModule(str(tmp_path / "pairs"), batch_size=2, val_size=2)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["src"].shape == (2, 3, 32, 32) and batch["src"].dtype == torch.float32
    assert batch["tgt"].min() >= -1 and batch["tgt"].max() <= 1
    assert dm.num_pairs == 6


def test_a_changed_config_is_refused_in_the_same_folder(compose):
    cfg = compose("worker=0", "num_workers=2")
    task.synthesize(cfg)
    with pytest.raises(shard_io.ShardsError, match=r"cutface\.p"):
        task.synthesize(compose("augmentation.cutface.p=0.9"))


def test_preview_writes_one_grid_per_stage(compose, tmp_path):
    from portrait_toon.data.images import read_image

    cfg = compose("task=preview")
    summary = task.synthesize(cfg)
    names = sorted(p.split("/")[-1] for p in summary["files"])
    assert names == sorted(
        [f"{n}.png" for n in task.PREVIEW_STAGES] + ["00_overview.png", "09_cutface_pair.png"]
    )
    labels = read_image(tmp_path / "run" / "preview" / "02_labels.png")
    assert labels.shape == (2 * 32 + 2, 32, 3)  # 2 seeds (rows), one column
    colours = {tuple(c) for c in labels.reshape(-1, 3)}
    skin = tuple(task.LABEL_PALETTE[1])
    assert skin in colours  # label maps are colour-coded with the parsing palette
    pair = read_image(tmp_path / "run" / "preview" / "08_training_pair.png")
    assert pair.shape == (2 * 32 + 2, 2 * 32 + 2, 3)
    assert not np.array_equal(pair[:, :32], pair[:, 34:])  # source and target differ


def test_unknown_task_is_named(compose):
    with pytest.raises(config.ConfigError, match="task='bogus' is unknown"):
        task.synthesize(compose("task=bogus"))


def test_character_task_says_what_it_needs(compose):
    import importlib.util

    available = importlib.util.find_spec("portrait_toon.tasks.character") is not None
    match = r"\+character=default" if available else "not available"
    with pytest.raises(config.ConfigError, match=match):
        task.synthesize(compose("task=character"))
