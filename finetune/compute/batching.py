"""Batches: a dynamic-padding collator and a length-grouped, shardable, resumable batch sampler.

Length grouping: each epoch the indices are shuffled (seeded by ``(seed, epoch)``), cut into
mega-batches of ``batch_size * world_size * mega_batch_factor`` rows, each mega-batch sorted by
length and cut into batches, and the batches shuffled again. Short sentences then share
batches with short sentences, so padding stays small, while the order still varies per epoch.

Sharding for DDP: global batch ``k`` goes to rank ``k % world_size``. The batch count is made a
multiple of ``world_size`` (a few batches are repeated, or the last dropped with
``drop_last``), so every rank runs the same number of steps and no collective waits forever.
Consecutive batches come from the same mega-batch, so the ranks of one step see similar lengths.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any


def collate(features: list[dict[str, Any]], pad_id: int, *, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Pad ``input_ids`` on the right to the longest row of the batch.

    Returns tensors ``input_ids`` and ``attention_mask`` (batch, length) and ``labels`` (batch,)
    when the features have labels.
    """
    import torch

    rows = [list(f["input_ids"]) for f in features]
    width = max((len(r) for r in rows), default=0)
    if pad_to_multiple_of and width % pad_to_multiple_of:
        width += pad_to_multiple_of - width % pad_to_multiple_of
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if features and "labels" in features[0]:
        batch["labels"] = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
    return batch


class LengthGroupedBatchSampler:
    """Yields lists of row indices; see the module docstring for the order.

    ``shuffle=False`` (evaluation) sorts all rows by length once and needs no seed. Iterating
    yields this rank's batches of the current epoch, starting after any batches passed to
    ``skip``; ``len()`` is the number of batches the next iteration yields.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        mega_batch_factor: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.mega_batch_factor = max(1, int(mega_batch_factor))
        self.epoch = 0
        self._skip = 0
        self._consumed = 0

    # -- order -------------------------------------------------------------------------------
    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch, before sharding (a multiple of ``world_size`` of them)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.lengths)
        if n == 0:
            return []
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: (-self.lengths[i], i))
            return self._even([order[i : i + self.batch_size] for i in range(0, n, self.batch_size)])
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        mega = self.batch_size * self.world_size * self.mega_batch_factor
        batches = []
        for start in range(0, n, mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        batches = self._even(batches)
        # Shuffle groups of world_size consecutive batches, so the ranks of one step keep
        # batches of similar lengths.
        groups = [batches[i : i + self.world_size] for i in range(0, len(batches), self.world_size)]
        rng.shuffle(groups)
        batches = [b for g in groups for b in g]
        return batches

    def _even(self, batches: list[list[int]]) -> list[list[int]]:
        """Make the batch count a multiple of ``world_size``: drop the last ones, or repeat the
        ones just before the incomplete last group (similar lengths: same mega-batch)."""
        n = len(batches)
        extra = n % self.world_size
        if not extra:
            return batches
        if self.drop_last:
            return batches[: n - extra]
        return batches + [batches[(n - extra - 1 - i) % n] for i in range(self.world_size - extra)]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch, ignoring ``skip``."""
        return self.global_batches(epoch)[self.rank :: self.world_size]

    # -- epochs and resume -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (resets a pending ``skip``)."""
        self.epoch = int(epoch)
        self._skip = 0
        self._consumed = 0

    def skip(self, n_batches: int) -> None:
        """Resume mid-epoch: the next iteration starts after this rank's first ``n_batches``."""
        if n_batches < 0:
            raise ValueError("cannot skip a negative number of batches")
        self._skip = int(n_batches)

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch", "consumed"}``: ``consumed`` counts batches handed out this epoch.

        With a prefetching DataLoader the sampler runs ahead of training; a trainer that
        resumes exactly should count its own optimizer steps and call ``skip`` with those.
        """
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.set_epoch(int(state["epoch"]))
        self.skip(int(state.get("consumed", 0)))

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self._skip)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        start, self._skip = self._skip, 0
        self._consumed = start
        for batch in batches[start:]:
            self._consumed += 1
            yield list(batch)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when ``batches`` are padded to their longest row (benchmarks)."""
    total = padded = 0
    for batch in batches:
        if not batch:
            continue
        width = max(lengths[i] for i in batch)
        total += width * len(batch)
        padded += sum(width - lengths[i] for i in batch)
    return padded / total if total else 0.0
