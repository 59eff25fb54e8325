"""ShardedBatches: how an epoch is split between DDP ranks (no processes needed)."""

from __future__ import annotations

import pytest
import torch

from vaelab.data.sampling import ShardedBatches


def epoch(num_items, batch_size, shuffle, world, epoch_=0, seed=7):
    """Each rank's batches for one epoch: list (ranks) of lists of index tensors."""
    ranks = []
    for rank in range(world):
        sampler = ShardedBatches(num_items, batch_size, shuffle, seed, rank, world)
        sampler.set_epoch(epoch_)
        batches = list(sampler)
        assert len(sampler) == len(batches)
        ranks.append(batches)
    return ranks


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("num_items", [500, 129, 7])
def test_training_epoch_sees_each_index_at_most_once(world, num_items):
    ranks = epoch(num_items, 64, True, world)
    seen = torch.cat([b for batches in ranks for b in batches])
    assert len(seen.unique()) == len(seen)  # no index twice
    # only a last global batch smaller than the number of ranks is left out
    last = num_items % (64 * world)
    assert num_items - len(seen) == (last if last < world else 0)
    assert len({len(batches) for batches in ranks}) == 1  # same number of steps on every rank


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_see_the_global_batches_of_one_process(world):
    ranks = epoch(500, 64, True, world, epoch_=3)
    (single,) = epoch(500, 64 * world, True, 1, epoch_=3)
    for step, global_batch in enumerate(single):
        parts = [batches[step] for batches in ranks]
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
        torch.testing.assert_close(torch.cat(parts), global_batch)


def test_training_order_changes_with_the_epoch_and_repeats_with_the_seed():
    first = torch.cat(epoch(500, 64, True, 2, epoch_=0)[0])
    assert not torch.equal(first, torch.cat(epoch(500, 64, True, 2, epoch_=1)[0]))
    torch.testing.assert_close(first, torch.cat(epoch(500, 64, True, 2, epoch_=0)[0]))
    assert not torch.equal(first, torch.cat(epoch(500, 64, True, 2, epoch_=0, seed=8)[0]))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("num_items", [50, 100, 129, 200, 1000])
def test_evaluation_covers_every_index_exactly_once_in_equal_step_counts(world, num_items):
    ranks = epoch(num_items, 40, False, world)
    in_rank_order = torch.cat([b for batches in ranks for b in batches])
    torch.testing.assert_close(in_rank_order, torch.arange(num_items))  # no padding, no repeat
    assert len({len(batches) for batches in ranks}) == 1
    assert all(0 < len(b) <= 40 for batches in ranks for b in batches)


def test_single_process_batches_are_full_but_the_last():
    (train,) = epoch(250, 64, True, 1)
    assert [len(b) for b in train] == [64, 64, 64, 58]
    (val,) = epoch(50, 40, False, 1)
    assert [len(b) for b in val] == [40, 10]


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        ShardedBatches(10, 4, False, rank=2, num_replicas=2)


def test_an_evaluation_sampler_leaves_the_global_generator_alone():
    # figures and metrics build evaluation loaders at various times: they must not shift the
    # random draws of training
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ShardedBatches(100, 10, shuffle=False)
    assert torch.equal(torch.rand(3), expected)
