"""Shard files: layout arithmetic, atomic writes, resume after a crash, manifest checks."""

from __future__ import annotations

import json

import pytest
import torch

from portrait_toon.data import shards as shard_io


def fake_pairs(indices: range, size: int = 8) -> dict[str, torch.Tensor]:
    """Pairs whose pixels encode their index (so a test can tell which pair it reads)."""
    index = torch.tensor(list(indices), dtype=torch.int64)
    value = (index.float() % 100 / 50 - 1).view(-1, 1, 1, 1)
    return {
        "src": value.expand(-1, 3, size, size).clone(),
        "tgt": (-value).expand(-1, 3, size, size).clone(),
        "head_mask": torch.rand(len(index), 1, size, size),
        "skin_mask": torch.zeros(len(index), 1, size, size),
        "is_cutface": index % 2 == 0,
        "index": index,
    }


@pytest.mark.parametrize("num_pairs,shard_size,workers", [(1000, 100, 2), (10, 3, 4), (7, 7, 3)])
def test_shard_ranges_partition_the_indices(num_pairs, shard_size, workers):
    total = shard_io.num_shards(num_pairs, shard_size)
    seen: list[int] = []
    for worker in range(workers):
        for shard_id in shard_io.shard_range(total, worker, workers):
            seen += list(shard_io.shard_indices(shard_id, shard_size, num_pairs, index_start=5))
    assert seen == list(range(5, 5 + num_pairs))  # every index once, in order


def test_shard_range_rejects_bad_worker():
    with pytest.raises(ValueError, match="worker"):
        shard_io.shard_range(10, 2, 2)


def test_encode_decode_roundtrip_within_quantisation():
    pairs = fake_pairs(range(4))
    decoded = shard_io.decode_pairs(shard_io.encode_pairs(pairs))
    for key in ("src", "tgt"):
        assert decoded[key].dtype == torch.float32
        assert (decoded[key] - pairs[key]).abs().max() <= 1 / 127.5 / 2 + 1e-6
    assert (decoded["head_mask"] - pairs["head_mask"]).abs().max() <= 1 / 255 / 2 + 1e-6
    assert torch.equal(decoded["is_cutface"], pairs["is_cutface"])
    assert torch.equal(decoded["index"], pairs["index"])


def test_write_shard_checks_indices_and_reads_back(tmp_path):
    encoded = shard_io.encode_pairs(fake_pairs(range(10, 14)))
    path = shard_io.write_shard(tmp_path, 3, encoded, range(10, 14))
    assert path.name == "shard_000003.pt"
    back = shard_io.read_shard(path)
    assert back["index"].tolist() == [10, 11, 12, 13]
    assert torch.equal(back["src"], encoded["src"])
    with pytest.raises(shard_io.ShardsError, match="should hold"):
        shard_io.write_shard(tmp_path, 4, encoded, range(14, 18))


def test_crash_mid_write_leaves_no_shard(tmp_path, monkeypatch):
    encoded = shard_io.encode_pairs(fake_pairs(range(4)))

    def crash(obj, handle):  # torch.save dies after writing part of the file
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(shard_io.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        shard_io.write_shard(tmp_path, 0, encoded)
    assert shard_io.finished_shards(tmp_path) == set()
    assert list(tmp_path.iterdir()) == []  # the temp file is removed as well


def test_finished_shards_ignores_temp_files(tmp_path):
    shard_io.write_shard(tmp_path, 1, shard_io.encode_pairs(fake_pairs(range(2))))
    (tmp_path / "shard_000002.pt.tmp-123-abc").write_bytes(b"half")  # a killed writer's leftover
    assert shard_io.finished_shards(tmp_path) == {1}
    assert [p.name for p in shard_io.stale_temp_files(tmp_path, [2])] == [
        "shard_000002.pt.tmp-123-abc"
    ]
    assert shard_io.stale_temp_files(tmp_path, [1]) == []


def manifest(**changes):
    base = {
        "format": shard_io.FORMAT,
        "num_pairs": 10,
        "index_start": 0,
        "shard_size": 4,
        "config": {"augmentation": {"cutface": {"p": 0.3}}},
    }
    base.update(changes)
    return base


def test_manifest_roundtrip_and_mismatch(tmp_path):
    shard_io.write_manifest(tmp_path, manifest())
    assert json.loads((tmp_path / "manifest.json").read_text())["shard_size"] == 4
    shard_io.write_manifest(tmp_path, manifest())  # same pairs: accepted
    with pytest.raises(shard_io.ShardsError, match=r"augmentation\.cutface\.p: 0\.3 -> 0\.5"):
        shard_io.write_manifest(
            tmp_path, manifest(config={"augmentation": {"cutface": {"p": 0.5}}})
        )
    with pytest.raises(shard_io.ShardsError, match="num_pairs"):
        shard_io.write_manifest(tmp_path, manifest(num_pairs=11))


def test_read_manifest_errors_name_the_folder(tmp_path):
    with pytest.raises(shard_io.ShardsError, match="no shard folder.*synthesize.py"):
        shard_io.read_manifest(tmp_path / "missing")
    with pytest.raises(shard_io.ShardsError, match="no manifest.json"):
        shard_io.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(shard_io.ShardsError, match="not valid JSON"):
        shard_io.read_manifest(tmp_path)
