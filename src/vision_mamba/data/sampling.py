"""Which samples each process sees, epoch by epoch, reproducibly and resumably.

Shuffling, sharding across processes and repeated augmentation are torch's ``DistributedSampler`` and timm's
``RepeatAugSampler``; :class:`EpochSampler` adds what resumable training needs on top:

- ``batch_size`` is the GLOBAL batch: process ``rank`` of ``world_size`` takes ``batch_size // world_size``
  samples per step, and step k of every process together covers the same samples as step k of a single process
  (both samplers deal the shuffled list out round-robin). So the number of steps per epoch, the schedule and
  the order of samples do not depend on the number of processes.
- ``set_epoch(epoch, start_step)``: the order is a function of (seed, epoch) only; a run resumed in the middle of
  an epoch starts at the step where it stopped.
- every sample comes with its own seed (a function of seed, epoch, rank and position), which the datasets use for
  its random augmentation: what a sample looks like does not depend on which worker loaded it.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochSampler", "ShardSampler", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a few integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


class EpochSampler(Sampler):
    """Training indices of one process for one epoch, as (index, seed) pairs, whole global batches only.

    Args:
        num_samples: size of the dataset.
        batch_size: the global batch (all processes together); must be divisible by ``world_size``.
        world_size / rank: the processes sharing the epoch.
        shuffle: a fresh permutation each epoch (seeded by ``seed`` and the epoch).
        seed: run seed.
        repeats: repeated augmentation (DeiT: 3): each selected image appears ``repeats`` times in an epoch, in
            different processes when there are several (timm's RepeatAugSampler). 1 = off.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, repeats: int = 1):
        if batch_size % world_size:
            raise ValueError(f"the global batch size ({batch_size}) must be divisible by the number of processes "
                             f"({world_size})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.world_size, self.rank = world_size, rank
        self.seed = seed
        self.repeats = repeats
        data = range(num_samples)
        if repeats > 1:
            from timm.data.distributed_sampler import RepeatAugSampler

            self.base = RepeatAugSampler(data, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                         num_repeats=repeats)
            total = len(self.base) * world_size
        else:
            self.base = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                           drop_last=False)
            total = num_samples
        self.steps_per_epoch = total // batch_size
        if self.steps_per_epoch == 0:
            from ..engine.config import ConfigError

            raise ConfigError(f"config key 'batch_size': the batch size ({batch_size}) is larger than what one "
                              f"epoch offers ({total} samples of a dataset of {num_samples}); lower batch_size")
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside the epoch (0..{self.steps_per_epoch})")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def epoch_pairs(self) -> List[Tuple[int, int]]:
        """(index, seed) for every step of the current epoch from ``start_step`` on."""
        if self.repeats > 1:  # RepeatAugSampler shuffles with the epoch as its only seed: fold the run seed in
            self.base.set_epoch(mix_seed(self.seed, self.epoch) & 0x7FFFFFFF)
        else:
            self.base.set_epoch(self.epoch)
        indices = list(self.base)[: self.steps_per_epoch * self.local_batch_size]
        seeds = np.random.default_rng([self.seed, self.epoch, self.rank, 0x5EED]).integers(
            0, 2 ** 62, size=len(indices)).tolist()
        start = self.start_step * self.local_batch_size
        return list(zip(indices[start:], seeds[start:]))

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter(self.epoch_pairs())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch_size


class ShardSampler(Sampler):
    """Evaluation: indices ``rank, rank + world_size, ...`` in order, no padding (every image counted once)."""

    def __init__(self, num_samples: int, world_size: int = 1, rank: int = 0):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochLoaderBase:
    """What every training loader over an :class:`EpochSampler` shares: its length in steps."""

    sampler: EpochSampler

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch
