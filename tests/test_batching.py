"""Dynamic padding and the length-grouped, deterministic, shardable, resumable batch sampler."""

from __future__ import annotations

import random

import pytest
import torch

from finetune.compute.batching import LengthGroupedBatchSampler, collate, padding_fraction


def lengths_of(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def test_collate_right_pads_with_pad_id():
    feats = [{"input_ids": [5, 6, 7], "labels": 2}, {"input_ids": [8], "labels": 0}, {"input_ids": [1, 2], "labels": 1}]
    batch = collate(feats, pad_id=99)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99], [1, 2, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["labels"].tolist() == [2, 0, 1]
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long


def test_collate_pad_to_multiple_and_no_labels():
    batch = collate([{"input_ids": [1, 2, 3]}], pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (1, 8)
    assert batch["attention_mask"].sum().item() == 3
    assert "labels" not in batch


def test_every_row_once_per_epoch_and_batch_sizes():
    lengths = lengths_of(1003)
    s = LengthGroupedBatchSampler(lengths, 32, seed=1)
    batches = list(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert all(len(b) <= 32 for b in batches)
    assert len(s) == len(batches) == 32  # 31 full batches + a partial one per mega-batch


def test_deterministic_per_seed_and_epoch():
    lengths = lengths_of()
    a = LengthGroupedBatchSampler(lengths, 16, seed=7)
    b = LengthGroupedBatchSampler(lengths, 16, seed=7)
    assert a.batches(0) == b.batches(0)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != LengthGroupedBatchSampler(lengths, 16, seed=8).batches(0)
    a.set_epoch(3)
    assert list(a) == b.batches(3)


def test_length_grouping_reduces_padding():
    lengths = lengths_of(2000)
    grouped = LengthGroupedBatchSampler(lengths, 32, seed=0).batches(0)
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    plain = [order[i : i + 32] for i in range(0, len(order), 32)]
    assert padding_fraction(lengths, grouped) < 0.1 < 0.3 < padding_fraction(lengths, plain)


def test_no_shuffle_sorts_by_length():
    lengths = [3, 9, 1, 9, 4]
    s = LengthGroupedBatchSampler(lengths, 2, shuffle=False)
    assert list(s) == [[1, 3], [4, 0], [2]]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharding_gives_equal_batch_counts_and_covers_all_rows(world_size):
    lengths = lengths_of(517)
    shards = [
        LengthGroupedBatchSampler(lengths, 8, seed=3, rank=r, world_size=world_size).batches(2) for r in range(world_size)
    ]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(517))
    # the ranks of one step get batches from the same mega-batch: similar lengths
    for step in zip(*shards, strict=True):
        widths = [max(lengths[i] for i in b) for b in step]
        assert max(widths) - min(widths) <= 40


def test_sharding_drop_last_drops_instead_of_repeating():
    lengths = lengths_of(50)
    shards = [LengthGroupedBatchSampler(lengths, 8, seed=0, rank=r, world_size=3, drop_last=True) for r in range(3)]
    counts = [len(s) for s in shards]
    assert counts == [2, 2, 2]  # 7 batches -> 6
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat))


def test_skip_resumes_exactly():
    lengths = lengths_of(300)
    full = LengthGroupedBatchSampler(lengths, 10, seed=5)
    full.set_epoch(2)
    expected = list(full)
    resumed = LengthGroupedBatchSampler(lengths, 10, seed=5)
    resumed.set_epoch(2)
    resumed.skip(7)
    assert len(resumed) == len(expected) - 7
    assert list(resumed) == expected[7:]
    assert list(resumed) == expected  # skip applies to one iteration only


def test_state_dict_round_trip_mid_epoch():
    lengths = lengths_of(200)
    s = LengthGroupedBatchSampler(lengths, 10, seed=9)
    s.set_epoch(1)
    it = iter(s)
    taken = [next(it) for _ in range(4)]
    state = s.state_dict()
    assert state == {"seed": 9, "epoch": 1, "consumed": 4}
    other = LengthGroupedBatchSampler(lengths, 10, seed=0)
    other.load_state_dict(state)
    assert taken + list(other) == s.batches(1)


def test_works_as_a_dataloader_batch_sampler():
    from torch.utils.data import DataLoader

    rows = [{"input_ids": list(range(n)), "labels": n % 3} for n in lengths_of(64)]
    sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], 8, seed=0)
    loader = DataLoader(rows, batch_sampler=sampler, collate_fn=lambda f: collate(f, pad_id=0))
    shapes = [b["input_ids"].shape for b in loader]
    assert len(shapes) == 8 and all(s[0] == 8 for s in shapes)
    assert sum(int(b["attention_mask"].sum()) for b in loader) == sum(len(r["input_ids"]) for r in rows)


def test_empty_and_bad_arguments():
    assert list(LengthGroupedBatchSampler([], 4)) == []
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler([1], 0)
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler([1], 1, rank=2, world_size=2)
