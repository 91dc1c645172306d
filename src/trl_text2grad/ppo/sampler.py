"""The rollout sampler of :class:`~trl_text2grad.ppo.span_ppo_trainer.SpanPPOTrainer`."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["RolloutSampler"]


class RolloutSampler(Sampler[int]):
    """Yields each global rollout chunk of ``rollout_size`` indices ``repeat`` times (one per micro-step).

    The permutation of data epoch ``e`` is ``torch.randperm`` with a generator seeded ``seed + e`` (set by
    ``set_epoch``, which the ``Trainer`` calls), so a run resumed in any epoch sees the same order as an
    uninterrupted one. (``trl.trainer.utils.RepeatSampler`` draws every epoch from one generator created with the
    sampler, so a resumed run would see another order.) Rows that do not fill a last chunk are dropped.
    """

    def __init__(self, num_rows: int, rollout_size: int, repeat: int, shuffle: bool, seed: int) -> None:
        if rollout_size < 1 or repeat < 1:
            raise ValueError(f"rollout_size and repeat must be >= 1, got {rollout_size} and {repeat}.")
        self.num_rows, self.rollout_size, self.repeat = num_rows, rollout_size, repeat
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = list(range(self.num_rows))
        for start in range(0, self.num_rows - self.rollout_size + 1, self.rollout_size):
            chunk = order[start : start + self.rollout_size]
            for _ in range(self.repeat):
                yield from chunk

    def __len__(self) -> int:
        return (self.num_rows // self.rollout_size) * self.rollout_size * self.repeat
