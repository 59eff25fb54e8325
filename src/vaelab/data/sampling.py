"""Batch samplers that split an epoch between the processes of a distributed run.

Hand-written because ``torch.utils.data.DistributedSampler`` does not fit in-memory batches:
it yields single indices (our loaders gather a whole batch of indices in one indexing op) and
it pads a split by repeating samples so that every rank gets as many, which would count some
validation and test images twice in the epoch means.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardedBatches(Sampler[torch.Tensor]):
    """The batches (int64 index tensors [B]) of indices 0..num_items-1 for process ``rank``
    of ``num_replicas``.

    ``shuffle=True`` (training): each epoch a permutation seeded by ``(seed, epoch)`` (the
    same on every rank) is cut into global batches of ``batch_size * num_replicas``; each rank
    takes its contiguous part of every global batch. The ranks together therefore see exactly
    the global batches one process sees with ``batch_size * num_replicas``, every index at most
    once per epoch. A last global batch with fewer than ``num_replicas`` indices is dropped (a
    rank would get nothing and the ranks would take different numbers of optimizer steps).
    Call ``set_epoch(epoch)`` before each epoch; Lightning's fit loop does so for any sampler
    that has the method.

    ``shuffle=False`` (evaluation): each rank takes a contiguous shard of the indices in order
    (sizes differ by at most one) and cuts it into batches of ``batch_size``, the last one
    smaller, as many batches on every rank; no index is repeated or dropped, so means weighted
    by counts and summed over ranks are exact.

    ``batches_per_item > 1`` (training): each item is that many consecutive batches of the
    epoch joined into one index tensor (the last item may hold fewer), so a training step
    that takes several optimizer steps gets them in one loader call, the same batches in the
    same order; ``len()`` counts items, ``num_batches`` the batches.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        shuffle: bool,
        seed: int | None = None,
        rank: int = 0,
        num_replicas: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.num_items = num_items
        self.batch_size = batch_size
        self.shuffle = shuffle
        # unseeded shuffling: a seed from torch's global generator (evaluation order needs
        # none, so building an evaluation loader leaves the global generator as it was)
        if seed is None:
            seed = int(torch.randint(2**31 - 1, ())) if shuffle else 0
        self.seed = int(seed)
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0
        self._skip = 0
        self.batches_per_item = 1
        # the first this many batches of an epoch (an int), or that share of them (a float),
        # as Lightning's limit_train_batches counts them; None: all
        self.max_batches: int | float | None = None
        # where the data live: the epoch's indices go there in one copy, not one per batch
        # (a host-to-device copy from pageable memory waits for the device)
        self.device = torch.device(device) if device is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, skip_batches: int) -> None:
        """Make the next pass start after its first ``skip_batches`` batches: an epoch
        interrupted part way is finished on the images it had not seen (the order is a
        function of the seed and the epoch)."""
        self._skip = skip_batches

    def _train_batches(self) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)
        global_batches = order.split(self.batch_size * self.num_replicas)
        return [
            b.tensor_split(self.num_replicas)[self.rank]
            for b in global_batches
            if len(b) >= self.num_replicas
        ]

    def _eval_batches(self) -> list[torch.Tensor]:
        shard = torch.arange(self.num_items).tensor_split(self.num_replicas)[self.rank]
        largest_shard = math.ceil(self.num_items / self.num_replicas)
        per_rank = math.ceil(largest_shard / self.batch_size)
        batches = shard.split(self.batch_size)
        if len(batches) < per_rank:  # a shorter shard: as many (smaller) batches as the others
            batches = shard.tensor_split(per_rank)
        return [b for b in batches if len(b)]

    def _batches(self) -> list[torch.Tensor]:
        return self._train_batches() if self.shuffle else self._eval_batches()

    def __iter__(self) -> Iterator[torch.Tensor]:
        skip, self._skip = self._skip, 0
        batches = self._batches()
        batches = batches[: self._limit(len(batches))][skip:]
        if self.batches_per_item > 1:
            n = self.batches_per_item
            batches = [torch.cat(batches[i : i + n]) for i in range(0, len(batches), n)]
        if self.device is not None and self.device.type != "cpu" and batches:
            sizes = [len(b) for b in batches]
            batches = torch.cat(batches).to(self.device).split(sizes)
        yield from batches

    @property
    def num_batches(self) -> int:
        """Batches of ``batch_size`` in a whole pass, after ``max_batches`` (``len()`` counts
        items)."""
        if self.shuffle:
            full, rest = divmod(self.num_items, self.batch_size * self.num_replicas)
            return self._limit(full + (rest >= self.num_replicas))
        return self._limit(len(self._eval_batches()))

    def _limit(self, total: int) -> int:
        """How many of ``total`` batches ``max_batches`` keeps."""
        limit = self.max_batches
        if limit is None:
            return total
        if isinstance(limit, float):  # Lightning's rule for a fraction
            return int(total * limit) if limit < 1.0 else total
        return min(total, int(limit))

    def __len__(self) -> int:
        return math.ceil(self.num_batches / self.batches_per_item)
