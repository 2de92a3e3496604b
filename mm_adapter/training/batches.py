"""What the trainer eats: tokenised examples, length-grouped micro-batches, dynamic padding.

An example is a mapping with ``input_ids`` and ``labels`` (lists of ints of one length, ``-100``
where no loss is taken) plus any per-sample extras (e.g. ``image_features``: a tensor), which the
default collator stacks. Batches are planned from lengths alone, deterministically from the seed,
so every rank of a distributed run computes the same plan and takes its own share of each step,
and a resumed run can skip to any step without reading data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE_INDEX = -100
Example = Mapping[str, Any]
TEXT_KEYS = ("input_ids", "labels")


def labelled_positions(example: Example) -> int:
    """Tokens whose next-token prediction carries a loss (labels are shifted by one)."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


@dataclass
class PadCollator:
    """Right-pad a micro-batch to its own longest example; stack any extra per-sample values."""

    pad_id: int

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.as_tensor(example["input_ids"])
            labels[row, :length] = torch.as_tensor(example["labels"])
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        for key in examples[0]:
            if key not in TEXT_KEYS:
                batch[key] = torch.stack([torch.as_tensor(example[key]) for example in examples])
        return batch


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_batches: int = 64) -> list[list[int]]:
    """One epoch's micro-batches (lists of example indices), grouped by length.

    Shuffle, sort each window of ``batch_size * group_batches`` examples by length, cut it into
    micro-batches, then shuffle the micro-batches: little padding, yet random order and mixture.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda index: -lengths[index])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@dataclass
class BatchPlan:
    """The stream of micro-batches over all epochs, cut into optimizer steps.

    Step ``k`` consumes global micro-batches ``[k * per_step, (k + 1) * per_step)`` with
    ``per_step = world_size * accum_steps``; rank ``r`` takes the ``r``-th run of ``accum_steps``
    of them. The stream does not depend on the world size, so one process with ``accum_steps=2``
    sees the same step batches as two processes with ``accum_steps=1``.
    """

    lengths: Sequence[int]
    batch_size: int
    seed: int
    epochs: int
    world_size: int = 1
    accum_steps: int = 1
    group_batches: int = 64
    max_steps: int | None = None  # stop (and end the schedule) after this many optimizer steps
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def per_step(self) -> int:
        return self.world_size * self.accum_steps

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    @property
    def total_steps(self) -> int:
        steps = self.epochs * self.batches_per_epoch // self.per_step
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached after ``step`` optimizer steps."""
        return step * self.per_step / self.batches_per_epoch

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            if len(self._cache) >= 2:  # steps move forward and straddle at most two epochs
                self._cache.pop(min(self._cache))
            self._cache[epoch] = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group_batches)
        return self._cache[epoch]

    def step_batches(self, step: int) -> list[list[int]]:
        """All ``per_step`` micro-batches of optimizer step ``step`` (every rank's)."""
        first = step * self.per_step
        return [self._epoch(i // self.batches_per_epoch)[i % self.batches_per_epoch]
                for i in range(first, first + self.per_step)]

    def rank_batches(self, step: int, rank: int) -> list[list[int]]:
        return self.step_batches(step)[rank * self.accum_steps:(rank + 1) * self.accum_steps]


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Token slots a forward pass computes for these micro-batches with dynamic padding."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
