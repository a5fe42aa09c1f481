"""Lightning data modules: pairs made on the fly on the trainer's device, or read from shards.

Both feed an endless, step-based stream. Batch `b` of DDP rank `r` (of `W` ranks, batch size
`B`) holds stream positions `(b·W + r)·B ... + B - 1`, so ranks never share a pair and the
union over ranks is what one process with batch `W·B` would see. `state_dict()` stores the
next unseen position, so a resumed run continues the stream where the checkpoint left it.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from portrait_toon.data import shards as shard_io

log = logging.getLogger(__name__)

HELDOUT_INDEX_BASE = 10**9
"""Pair indices from here on are never trained on (validation and evaluation draw from them)."""


def stream_positions(batch: int, rank: int, world_size: int, batch_size: int) -> range:
    """Stream positions of batch `batch` on rank `rank`: disjoint across ranks and batches."""
    first = (batch * world_size + rank) * batch_size
    return range(first, first + batch_size)


def _distributed_context(trainer: Any) -> tuple[int, int]:
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def landscape_batch(
    bank: Any, base_seed: int, index: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Landscape crops for pairs `index` (uint8 [B,3,h,w]), each from the pair's own seed."""
    from portrait_toon.synthesis.latents import pair_seed

    seeds = pair_seed(base_seed, index.reshape(-1), "landscape").tolist()
    return torch.stack([bank.sample(int(seed), size) for seed in seeds])


class _StreamDataset(IterableDataset):
    """Endless (or `num_batches` long) stream of items for positions of one rank.

    Items are dicts of tensors, collated into batches by the DataLoader. With several loader
    workers, worker k produces batches k, k+K, ...; the loader takes them round-robin, so the
    batch order is the same for any number of workers.
    """

    def __init__(
        self,
        batch_size: int,
        rank: int,
        world_size: int,
        start_batch: int = 0,
        num_batches: int | None = None,
        position_limit: int | None = None,
        reuse: int = 1,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        # each batch of positions is yielded `reuse` times in a row, with "round" 0..reuse-1
        self.reuse = int(reuse)
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.num_batches = num_batches
        # a finite set (validation): positions from here on are left out, not wrapped around
        self.position_limit = position_limit

    def item(self, position: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = self.start_batch + worker
        stop = None if self.num_batches is None else self.start_batch + self.num_batches
        while stop is None or batch < stop:
            unit, crop_round = divmod(batch, self.reuse)
            for position in stream_positions(unit, self.rank, self.world_size, self.batch_size):
                if self.position_limit is not None and position >= self.position_limit:
                    return
                item = self.item(position)
                if self.reuse > 1:
                    item["round"] = torch.tensor(crop_round, dtype=torch.int64)
                yield item
            batch += num_workers


class _IndexStream(_StreamDataset):
    """Pair indices (+ landscape crops): the loader side of the on-the-fly synthesis."""

    def __init__(
        self,
        *,
        index_base: int,
        base_seed: int,
        landscape_size: tuple[int, int] | None,
        landscape_dir: str | None,
        **stream: Any,
    ) -> None:
        super().__init__(**stream)
        self.index_base = index_base
        self.base_seed = base_seed
        self.landscape_size = landscape_size
        self.landscape_dir = landscape_dir
        self._bank: Any = None  # built lazily, once per loader worker

    def item(self, position: int) -> dict[str, torch.Tensor]:
        index = torch.tensor(self.index_base + position, dtype=torch.int64)
        item = {"index": index}
        if self.landscape_size is not None:
            if self._bank is None:
                from portrait_toon.synthesis.landscapes import LandscapeBank

                self._bank = LandscapeBank(image_dir=self.landscape_dir)
            item["landscape"] = landscape_batch(
                self._bank, self.base_seed, index.reshape(1), self.landscape_size
            )[0]
        return item


class _StreamDataModule(pl.LightningDataModule):
    """Stream bookkeeping shared by both modules: rank split, resume position, validation."""

    def __init__(self, batch_size: int, num_workers: int, val_size: int) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"data.val_size must be >= 0, got {val_size}")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_size = int(val_size)
        # first stream position not yet consumed by a training step (resume point)
        self._next_position = 0
        self._stream_layout = (self.batch_size, 1)  # (batch size, world size) of the live stream

    # -- the stream ---------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        return _distributed_context(self.trainer)

    def _start_batch(self, world_size: int) -> int:
        # a changed batch size or world size resumes at the first batch with no seen position
        return math.ceil(self._next_position / (self.batch_size * world_size))

    def _loader(self, dataset: IterableDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=False,
            pin_memory=False,
        )

    def _note_consumed(self, first_position: int) -> None:
        """Record a training batch as consumed (its first stream position identifies it)."""
        batch_size, world_size = self._stream_layout
        batch = first_position // (batch_size * world_size)
        self._next_position = max(self._next_position, (batch + 1) * batch_size * world_size)

    def _is_training_batch(self) -> bool:
        trainer = self.trainer
        return trainer is None or bool(trainer.training)

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved into every Lightning checkpoint: the next unseen stream position."""
        return {"next_position": self._next_position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._next_position = int(state_dict["next_position"])
        log.info("data stream resumes at position %d", self._next_position)


class OnTheFlyDataModule(_StreamDataModule):
    """Pairs synthesized on the trainer's device: the loader yields only pair indices.

    Args:
        synthesizer: a `PairSynthesizer` (an nn.Module; moved to the batch's device once).
        batch_size: pairs per step and rank.
        base_seed: the data stream's seed (landscape choice; pairs themselves use the
            synthesizer's own base_seed, which the train task sets to the same value).
        num_workers: DataLoader workers (landscape decoding is the only loader work).
        landscape_dir: user landscape photos for CutFace (None: the built-in ones).
        landscapes: load a landscape crop per pair (only useful when CutFace is on).
        val_size: held-out pairs (indices from HELDOUT_INDEX_BASE) for validation_step.
        reuse: training steps per synthesized batch (1 = every step new pairs). k > 1 keeps
            the batch made before the crop and trains k steps on it, each through another
            random crop/flip of the same pairs (`PairSynthesizer.cropped`): synthesis costs
            1/k per step. The paper trains on a fixed synthetic set for many epochs (every
            pair reused); this is the on-the-fly middle ground for slow synthesis (real
            networks on a CPU or a small GPU). A run resumed mid-batch starts the next one.
    """

    def __init__(
        self,
        synthesizer: torch.nn.Module,
        batch_size: int,
        base_seed: int,
        num_workers: int = 0,
        landscape_dir: str | None = None,
        landscapes: bool = True,
        val_size: int = 0,
        reuse: int = 1,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size)
        if int(reuse) < 1:
            raise ValueError(f"data.reuse must be >= 1 (steps per synthesized batch), got {reuse}")
        self.reuse = int(reuse)
        crop = getattr(synthesizer, "crop_options", {"enabled": True})
        if self.reuse > 1 and not crop["enabled"]:
            log.warning(
                "data.reuse=%d with augmentation.crop.enabled=false: each batch is trained "
                "on %d times unchanged",
                self.reuse,
                self.reuse,
            )
        self._kept: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None
        synthesizer_seed = getattr(synthesizer, "base_seed", None)
        if synthesizer_seed is not None and int(synthesizer_seed) != int(base_seed):
            # the loader's landscapes and the synthesizer's pairs must come from one stream
            raise ValueError(
                f"data.base_seed={base_seed} differs from the synthesizer's base_seed="
                f"{synthesizer_seed}; build both from the same value"
            )
        self.synthesizer = synthesizer
        self.base_seed = int(base_seed)
        self.landscape_dir = landscape_dir
        self.landscapes = bool(landscapes)
        self._synthesizer_device: torch.device | None = None

    def _landscape_size(self) -> tuple[int, int] | None:
        if not self.landscapes:
            return None
        resolution = int(self.synthesizer.resolution)
        return (resolution, resolution)

    def _dataset(self, **stream: Any) -> _IndexStream:
        return _IndexStream(
            base_seed=self.base_seed,
            landscape_size=self._landscape_size(),
            landscape_dir=self.landscape_dir,
            **stream,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_world()
        self._stream_layout = (self.batch_size, world_size)
        start = self._start_batch(world_size) * self.reuse
        return self._loader(
            self._dataset(
                index_base=0,
                batch_size=self.batch_size,
                rank=rank,
                world_size=world_size,
                start_batch=start,
                reuse=self.reuse,
            )
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_size == 0:
            return []
        rank, world_size = self._rank_world()
        per_step = self.batch_size * world_size
        return self._loader(
            self._dataset(
                index_base=HELDOUT_INDEX_BASE,
                position_limit=self.val_size,
                batch_size=self.batch_size,
                rank=rank,
                world_size=world_size,
                num_batches=math.ceil(self.val_size / per_step),
            )
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict:
        """Turn `{index, landscape}` into pairs on the batch's device (no grad)."""
        index = batch["index"]
        if self._synthesizer_device != index.device:
            # once per device, not per batch: the synthesizer is not part of the model
            self.synthesizer.to(index.device)
            self._synthesizer_device = index.device
        training = self._is_training_batch()
        if training:
            self._note_consumed(int(index[0]))
        with torch.no_grad():
            if not training or "round" not in batch:
                return self.synthesizer(index, batch.get("landscape"))
            # data.reuse > 1: synthesize a batch once, re-crop it on its later rounds
            key = (int(index[0]), int(index.numel()))
            if self._kept is None or self._kept[0] != key:
                self._kept = (key, self.synthesizer.uncropped(index, batch.get("landscape")))
            return self.synthesizer.cropped(self._kept[1], int(batch["round"][0]))


class _ShardStream(_StreamDataset):
    """Stream positions -> pairs of a shard folder, reshuffled on every pass."""

    def __init__(
        self,
        *,
        files: list[Path],
        counts: list[int],
        positions: range,
        shuffle_seed: int | None,
        **stream: Any,
    ) -> None:
        super().__init__(**stream)
        self.files = files
        self.offsets = [0]
        for count in counts:
            self.offsets.append(self.offsets[-1] + count)
        self.positions = positions
        self.shuffle_seed = shuffle_seed
        self._order: tuple[int, torch.Tensor] | None = None
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()

    def _pair_position(self, position: int) -> int:
        size = len(self.positions)
        epoch, offset = divmod(position, size)
        if self.shuffle_seed is None:
            return self.positions[offset]
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(size, generator=generator))
        return self.positions[int(self._order[1][offset])]

    def _shard(self, file_number: int) -> dict[str, torch.Tensor]:
        if file_number in self._cache:
            self._cache.move_to_end(file_number)
        else:
            self._cache[file_number] = shard_io.read_shard(self.files[file_number], mmap=True)
            if len(self._cache) > 32:  # memory maps are cheap, open files are not unlimited
                self._cache.popitem(last=False)
        return self._cache[file_number]

    def item(self, position: int) -> dict[str, torch.Tensor]:
        pair = self._pair_position(position)
        file_number = bisect.bisect_right(self.offsets, pair) - 1
        shard = self._shard(file_number)
        row = pair - self.offsets[file_number]
        item = {key: shard[key][row].clone() for key in shard_io.SHARD_KEYS}
        item["position"] = torch.tensor(position, dtype=torch.int64)
        return item


class ShardsDataModule(_StreamDataModule):
    """Pairs read from a folder `synthesize.py` wrote; batches match the on-the-fly ones.

    Args:
        root: the shard folder (with manifest.json).
        batch_size: pairs per step and rank.
        num_workers: DataLoader workers.
        shuffle_seed: seed of the per-pass shuffle (null: index order).
        allow_incomplete: train on the finished shards when some are missing.
        val_size: the last `val_size` pairs are held out for validation_step.
    """

    def __init__(
        self,
        root: str,
        batch_size: int,
        num_workers: int = 0,
        shuffle_seed: int | None = 0,
        allow_incomplete: bool = False,
        val_size: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size)
        self.root = Path(root)
        self.shuffle_seed = shuffle_seed
        self.allow_incomplete = allow_incomplete
        self.manifest: dict[str, Any] | None = None
        self._files: list[Path] = []
        self._counts: list[int] = []

    def setup(self, stage: str | None = None) -> None:
        """Read and check the manifest and the list of finished shards."""
        if self.manifest is not None:
            return
        manifest = shard_io.read_manifest(self.root)
        total = shard_io.num_shards(manifest["num_pairs"], manifest["shard_size"])
        present = shard_io.finished_shards(self.root)
        missing = sorted(set(range(total)) - present)
        if len(present & set(range(total))) == 0:
            raise shard_io.ShardsError(
                f"{self.root} has a manifest but no finished shards: run "
                f"`python synthesize.py out_dir={self.root}` (it resumes) before training"
            )
        if missing and not self.allow_incomplete:
            raise shard_io.ShardsError(
                f"{self.root}: {len(missing)} of {total} shards are missing (first: "
                f"{missing[:5]}). Finish them with the same synthesize.py command (it resumes), "
                "or train on what exists with data.allow_incomplete=true"
            )
        if missing:
            log.warning("%s: training on %d of %d shards", self.root, total - len(missing), total)
        for shard_id in sorted(present & set(range(total))):
            indices = shard_io.shard_indices(
                shard_id, manifest["shard_size"], manifest["num_pairs"], manifest["index_start"]
            )
            self._files.append(self.root / shard_io.shard_name(shard_id))
            self._counts.append(len(indices))
        num_pairs = sum(self._counts)
        if self.val_size >= num_pairs:
            raise ValueError(
                f"data.val_size={self.val_size} leaves no training pairs ({num_pairs} on disk)"
            )
        self.manifest = manifest

    @property
    def num_pairs(self) -> int:
        self.setup()
        return sum(self._counts)

    def _dataset(self, positions: range, shuffle_seed: int | None, **stream: Any) -> _ShardStream:
        return _ShardStream(
            files=self._files,
            counts=self._counts,
            positions=positions,
            shuffle_seed=shuffle_seed,
            **stream,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        rank, world_size = self._rank_world()
        self._stream_layout = (self.batch_size, world_size)
        train_positions = range(0, self.num_pairs - self.val_size)
        return self._loader(
            self._dataset(
                train_positions,
                self.shuffle_seed,
                batch_size=self.batch_size,
                rank=rank,
                world_size=world_size,
                start_batch=self._start_batch(world_size),
            )
        )

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_size == 0:
            return []
        rank, world_size = self._rank_world()
        val_positions = range(self.num_pairs - self.val_size, self.num_pairs)
        return self._loader(
            self._dataset(
                val_positions,
                None,
                position_limit=self.val_size,
                batch_size=self.batch_size,
                rank=rank,
                world_size=world_size,
                num_batches=math.ceil(self.val_size / (self.batch_size * world_size)),
            )
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict:
        """uint8 on the wire, float on the device (4x less to copy)."""
        batch = dict(batch)
        position = batch.pop("position")
        if self._is_training_batch():
            self._note_consumed(int(position[0]))
        return shard_io.decode_pairs(batch)
