"""Dealing evaluation batches out to ranks and gathering the rows back (one process; the 2-node
run is in test_multinode.py)."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.compute.distributed import DistEnv, gather_rows, shard


def test_shard_deals_whole_batches_round_robin():
    batches = [[0, 1], [2], [3, 4], [5], [6]]
    assert shard(batches, DistEnv(0, 2)) == [[0, 1], [3, 4], [6]]
    assert shard(batches, DistEnv(1, 2)) == [[2], [5]]
    assert shard(batches, DistEnv(1, 2), even=True) == [[2], [5], None]  # FSDP: same number of forwards
    assert shard(batches, DistEnv()) == batches
    assert shard([], DistEnv(1, 3), even=True) == []
    # every batch exactly once over the ranks
    dealt = [b for r in range(3) for b in shard(batches, DistEnv(r, 3), even=True) if b is not None]
    assert sorted(map(tuple, dealt)) == sorted(map(tuple, batches))


def test_gather_rows_one_process_puts_rows_in_order():
    parts = [(np.array([3, 0]), np.array([[3.0, 3.5], [0.0, 0.5]])), (np.array([1, 2]), np.array([[1, 1.5], [2, 2.5]]))]
    out = gather_rows(parts, DistEnv(), n_rows=4, tail=(2,))
    assert out.dtype == np.float32 and out.tolist() == [[0, 0.5], [1, 1.5], [2, 2.5], [3, 3.5]]
    assert gather_rows([], DistEnv(), n_rows=0, tail=(7,)).shape == (0, 7)


def test_gather_rows_refuses_missing_or_doubled_rows():
    with pytest.raises(ValueError, match="1 rows computed by no rank"):
        gather_rows([(np.array([0]), np.zeros((1, 2)))], DistEnv(), n_rows=2, tail=(2,))
    with pytest.raises(ValueError, match="1 by several"):
        gather_rows([(np.array([0]), np.zeros((1, 2)))] * 2, DistEnv(), n_rows=1, tail=(2,))
