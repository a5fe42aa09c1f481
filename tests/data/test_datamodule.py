"""Data modules: disjoint pair streams across DDP ranks, exact resume, shards read back."""

from __future__ import annotations

import itertools

import pytest
import torch

from portrait_toon.data import shards as shard_io
from portrait_toon.data.datamodule import (
    HELDOUT_INDEX_BASE,
    OnTheFlyDataModule,
    ShardsDataModule,
)


class FakeSynthesizer(torch.nn.Module):
    """Stands in for PairSynthesizer: pixels encode the pair index; counts device moves."""

    def __init__(self, resolution: int = 8, base_seed: int = 0) -> None:
        super().__init__()
        self.resolution = resolution
        self.base_seed = base_seed
        self.moves = 0

    def to(self, *args, **kwargs):  # noqa: D102 - counting wrapper
        self.moves += 1
        return super().to(*args, **kwargs)

    def forward(self, index, landscapes=None):
        value = index.float().view(-1, 1, 1, 1)
        image = value.expand(-1, 3, self.resolution, self.resolution)
        return {"src": image, "tgt": -image, "index": index, "landscapes": landscapes}


def module(world_rank=(0, 1), **kwargs) -> OnTheFlyDataModule:
    options = {"batch_size": 3, "base_seed": 0, "landscapes": False, **kwargs}
    dm = OnTheFlyDataModule(FakeSynthesizer(base_seed=options["base_seed"]), **options)
    dm._rank_world = lambda: world_rank  # what a DDP trainer would report
    return dm


def first_batches(loader, count: int) -> list[list[int]]:
    return [batch["index"].tolist() for batch in itertools.islice(loader, count)]


def test_ranks_draw_disjoint_indices_whose_union_is_the_single_process_stream():
    world, batch_size, steps = 3, 2, 4
    per_rank = [
        first_batches(module((rank, world), batch_size=batch_size).train_dataloader(), steps)
        for rank in range(world)
    ]
    single = first_batches(module((0, 1), batch_size=world * batch_size).train_dataloader(), steps)
    for step in range(steps):
        step_indices = [i for rank in range(world) for i in per_rank[rank][step]]
        assert len(set(step_indices)) == world * batch_size  # no pair twice in a step
        assert sorted(step_indices) == sorted(single[step])  # same pairs as one big batch
    every = [i for rank in per_rank for batch in rank for i in batch]
    assert len(every) == len(set(every))  # and never twice across steps


def test_loader_workers_keep_the_order():
    plain = first_batches(module().train_dataloader(), 5)
    with_workers = first_batches(module(num_workers=2).train_dataloader(), 5)
    assert plain == with_workers == [[3 * b, 3 * b + 1, 3 * b + 2] for b in range(5)]


def test_state_dict_resumes_with_the_next_unseen_indices():
    dm = module()
    loader = iter(dm.train_dataloader())
    for _ in range(4):
        dm.on_after_batch_transfer(next(loader), 0)
    state = dm.state_dict()

    resumed = module()
    resumed.load_state_dict(state)
    assert first_batches(resumed.train_dataloader(), 1) == [[12, 13, 14]]
    # a resume with another batch size or world size still never repeats a pair
    other = module((1, 2), batch_size=4)
    other.load_state_dict(state)
    assert min(first_batches(other.train_dataloader(), 1)[0]) >= 12


def test_prefetched_batches_do_not_advance_the_resume_point():
    dm = module()
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(3)]  # the loader ran ahead of training
    dm.on_after_batch_transfer(batches[0], 0)
    assert dm.state_dict()["next_position"] == 3


def test_synthesizer_moves_once_and_makes_the_pairs():
    dm = module()
    loader = iter(dm.train_dataloader())
    first = dm.on_after_batch_transfer(next(loader), 0)
    second = dm.on_after_batch_transfer(next(loader), 0)
    assert dm.synthesizer.moves == 1
    assert second["src"][:, 0, 0, 0].tolist() == [3.0, 4.0, 5.0]
    assert first["tgt"][0, 0, 0, 0].item() == 0.0


def test_validation_uses_held_out_indices_and_does_not_move_the_stream():
    dm = module(val_size=4)
    batches = first_batches(dm.val_dataloader(), 10)
    assert batches == [[HELDOUT_INDEX_BASE + i for i in range(3)], [HELDOUT_INDEX_BASE + 3]]
    assert module(val_size=0).val_dataloader() == []


def test_landscapes_match_what_the_synthesizer_would_draw():
    from portrait_toon.synthesis.landscapes import LandscapeBank
    from portrait_toon.synthesis.latents import pair_seed

    dm = module(landscapes=True, base_seed=7)
    batch = next(iter(dm.train_dataloader()))
    assert batch["landscape"].dtype == torch.uint8
    assert batch["landscape"].shape == (3, 3, 8, 8)
    expected = LandscapeBank().sample_batch(pair_seed(7, batch["index"], "landscape"), (8, 8))
    assert torch.equal(batch["landscape"], expected)


def test_base_seed_must_match_the_synthesizer():
    with pytest.raises(ValueError, match="base_seed"):
        OnTheFlyDataModule(FakeSynthesizer(base_seed=1), batch_size=2, base_seed=2)


# --------------------------------------------------------------------------------------------
def write_folder(root, num_pairs=10, shard_size=4, skip=()):
    shard_io.write_manifest(
        root,
        {
            "format": shard_io.FORMAT,
            "num_pairs": num_pairs,
            "index_start": 100,
            "shard_size": shard_size,
            "config": {},
        },
    )
    for shard_id in range(shard_io.num_shards(num_pairs, shard_size)):
        if shard_id in skip:
            continue
        indices = shard_io.shard_indices(shard_id, shard_size, num_pairs, 100)
        index = torch.tensor(list(indices))
        image = (index.float() / 200).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
        pairs = {
            "src": image,
            "tgt": image,
            "head_mask": torch.ones(len(index), 1, 4, 4),
            "skin_mask": torch.zeros(len(index), 1, 4, 4),
            "is_cutface": torch.zeros(len(index), dtype=torch.bool),
            "index": index,
        }
        shard_io.write_shard(root, shard_id, shard_io.encode_pairs(pairs), indices)


def shards_module(root, world_rank=(0, 1), **kwargs) -> ShardsDataModule:
    dm = ShardsDataModule(str(root), **{"batch_size": 2, "val_size": 2, **kwargs})
    dm._rank_world = lambda: world_rank
    return dm


def test_shards_one_pass_covers_every_training_pair_once_across_ranks(tmp_path):
    write_folder(tmp_path)  # 10 pairs, 2 held out -> 8 training pairs
    seen = []
    for rank in range(2):
        dm = shards_module(tmp_path, (rank, 2))
        for batch in itertools.islice(dm.train_dataloader(), 2):  # 2 ranks x 2 x 2 = 8
            seen += dm.on_after_batch_transfer(batch, 0)["index"].tolist()
    assert sorted(seen) == list(range(100, 108))
    val = [b["index"].tolist() for b in shards_module(tmp_path).val_dataloader()]
    assert val == [[108, 109]]


def test_shards_batches_are_decoded_pairs(tmp_path):
    write_folder(tmp_path)
    dm = shards_module(tmp_path, shuffle_seed=None)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch) == set(shard_io.SHARD_KEYS)
    assert batch["src"].dtype == torch.float32
    expected = batch["index"].float() / 200
    assert torch.allclose(batch["src"][:, 0, 0, 0], expected, atol=1 / 127)


def test_shards_resume_continues_the_shuffled_stream(tmp_path):
    write_folder(tmp_path)
    dm = shards_module(tmp_path)
    loader = iter(dm.train_dataloader())
    reference = [dm.on_after_batch_transfer(next(loader), 0)["index"].tolist() for _ in range(8)]
    first_pass, second_pass = sum(reference[:4], []), sum(reference[4:], [])
    # each pass over the 8 training pairs shows every pair once, in a new order
    assert sorted(first_pass) == sorted(second_pass) == list(range(100, 108))
    assert first_pass != second_pass
    resumed = shards_module(tmp_path)
    first = shards_module(tmp_path)
    loader = iter(first.train_dataloader())
    for _ in range(3):
        first.on_after_batch_transfer(next(loader), 0)
    resumed.load_state_dict(first.state_dict())
    rest = [b["index"].tolist() for b in itertools.islice(resumed.train_dataloader(), 4)]
    assert rest == reference[3:7]


def test_shards_errors_name_the_problem(tmp_path):
    with pytest.raises(shard_io.ShardsError, match="no shard folder"):
        shards_module(tmp_path / "nothing").setup()
    write_folder(tmp_path, skip={1})
    with pytest.raises(shard_io.ShardsError, match=r"1 of 3 shards are missing.*allow_incomplete"):
        shards_module(tmp_path).setup()
    dm = shards_module(tmp_path, allow_incomplete=True)
    assert dm.num_pairs == 6
    empty = tmp_path / "empty"
    write_folder(empty, skip={0, 1, 2})
    with pytest.raises(shard_io.ShardsError, match="no finished shards"):
        shards_module(empty).setup()


class ReusableFake(FakeSynthesizer):
    """FakeSynthesizer with PairSynthesizer's two halves; records what it synthesizes."""

    crop_options = {"enabled": True}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.made: list[list[int]] = []

    def uncropped(self, index, landscapes=None):
        self.made.append(index.tolist())
        return self.forward(index, landscapes)

    def cropped(self, pairs, crop_round=0):
        return {**pairs, "round": crop_round}


def reuse_module(**kwargs) -> OnTheFlyDataModule:
    options = {"batch_size": 3, "base_seed": 0, "landscapes": False, **kwargs}
    dm = OnTheFlyDataModule(ReusableFake(), **options)
    dm._rank_world = lambda: (0, 1)
    return dm


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reuse_synthesizes_each_batch_once_and_recrops_it(num_workers):
    dm = reuse_module(reuse=3, num_workers=num_workers)
    loader = iter(dm.train_dataloader())
    steps = [dm.on_after_batch_transfer(next(loader), 0) for _ in range(7)]
    assert [s["index"].tolist() for s in steps] == [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3 + [[6, 7, 8]]
    assert [s["round"] for s in steps] == [0, 1, 2, 0, 1, 2, 0]
    assert dm.synthesizer.made == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # resume: the next batch never seen, from its first round
    resumed = reuse_module(reuse=3)
    resumed.load_state_dict(dm.state_dict())
    batch = next(iter(resumed.train_dataloader()))
    assert batch["index"].tolist() == [9, 10, 11] and batch["round"].tolist() == [0, 0, 0]


def test_reuse_leaves_validation_alone_and_is_checked():
    dm = reuse_module(reuse=2, val_size=3)
    batch = next(iter(dm.val_dataloader()))
    assert "round" not in batch
    with pytest.raises(ValueError, match="data.reuse"):
        reuse_module(reuse=0)
