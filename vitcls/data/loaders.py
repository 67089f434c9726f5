"""The DataLoaders of `ImageFolderDataModule`: training that resumes exactly, evaluation that every rank joins.

Training. The order of an epoch is a function of (shuffle_seed, epoch), and each sample's augmentation draws
are a function of (shuffle_seed, epoch, position in the epoch): they do not depend on which worker process
decodes the sample, on how many workers there are, on whether they persist, or on where the run started.
Every checkpoint holds the epoch and the number of batches trained in it (`ResumableDataLoader.state_dict`,
stored by `ImageFolderDataModule.state_dict`), and a resumed run's training loader starts there, even
mid-epoch. (Lightning creates a resumed run's first iterator before it sets the sampler's epoch: with worker
processes, which fetch indices at once, the first resumed epoch would replay the order of epoch 0.)

Evaluation. Every rank of a multi-process run must enter the same collectives at the end of a validation or
test epoch, and Lightning skips the epoch entirely on a rank whose loader is empty (fewer images than ranks):
`EvaluationDataLoader` gives such a rank one empty batch (None, which the LightningModule's steps skip).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

log = logging.getLogger(__name__)

# Sample seeds are 63-bit; numpy and `random` get them folded to what they accept.
_SEED_BOUND = 2**63 - 1
# Mixed into the seed of an epoch's sample seeds, so that they differ from the permutation's stream.
_SAMPLE_SEED_STREAM = 0x5EED


@contextmanager
def seeded_random_state(seed: int) -> Iterator[None]:
    """torch (CPU), numpy and `random` seeded with `seed` inside the block, and as they were after it.

    Outside a worker process (data.num_workers=0) the transform runs in the training process: the random
    numbers of dropout and drop-path must not depend on the augmentation.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed would reseed CUDA
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class EpochSampler(DistributedSampler):
    """A shuffling DistributedSampler (one process too) that can start an epoch part-way, and that yields
    `(index, seed)` instead of `index` when `seeded` (the seed of the sample's random transform), or
    `(index, epoch)` when `with_epoch` (a dataset of cached augmented views picks the view of the epoch)."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int, seeded: bool = False,
                 with_epoch: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.seeded = seeded
        self.with_epoch = with_epoch
        self._start: tuple[int, int] | None = None  # (epoch, samples of this rank to skip in it)

    def start_at(self, epoch: int, skip: int) -> None:
        """The next iteration is epoch `epoch`, without its first `skip` samples (of this rank)."""
        self.set_epoch(epoch)
        self._start = (epoch, skip)

    def sample_seeds(self) -> list[int]:
        """The seed of each position of this epoch's order, on this rank."""
        state = np.random.SeedSequence([self.seed, self.epoch, _SAMPLE_SEED_STREAM]).generate_state(2, np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] ^ (state[1] << np.uint64(1))) % _SEED_BOUND)
        seeds = torch.randint(0, _SEED_BOUND, (self.total_size,), generator=generator)
        return seeds[self.rank : self.total_size : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[Any]:
        indices: list[Any] = list(super().__iter__())
        if self.with_epoch:
            indices = [(index, self.epoch) for index in indices]
        elif self.seeded:
            indices = list(zip(indices, self.sample_seeds(), strict=True))
        skip = 0
        if self._start is not None and self._start[0] == self.epoch:
            skip = self._start[1]
        self._start = None
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """The training loader: its position (epoch, batches trained in it) goes into every checkpoint, and a
    resumed run starts there.

    Two things make that hold whatever Lightning does first. The iterator starts fetching at the first batch
    rather than when it is created: Lightning creates it before it restores a checkpoint and sets the epoch
    (`trainer.estimated_stepping_batches` loads the loader while the optimizers are configured), and worker
    processes would fetch that epoch's indices at once. And the position is restored by the DataModule
    (`ImageFolderDataModule.load_state_dict`, before any loader exists) as well as by Lightning's stateful
    loader support (`load_state_dict` here, which Lightning only calls when it creates the loader after the
    restore).

    `batches_done` returns how many batches of the current epoch have been trained (the trainer knows: the
    iterator runs ahead of training in the worker processes). With another sampler than an `EpochSampler`
    (Lightning puts a sequential one in for `trainer.overfit_batches`) there is no position to keep.
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int] = lambda: 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def __iter__(self) -> Iterator[Any]:
        return _StartedOnFirstBatch(super().__iter__)

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochSampler):
            return {}
        return {
            "epoch": self.sampler.epoch,
            "batches_done": int(self.batches_done()),
            "num_batches": len(self),
            "batch_size": int(self.batch_size or 0),
            "num_replicas": self.sampler.num_replicas,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, EpochSampler):
            return
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        layout = {"num_batches": len(self), "batch_size": int(self.batch_size or 0),
                  "num_replicas": self.sampler.num_replicas}
        changed = {key: (state.get(key), value) for key, value in layout.items() if state.get(key) != value}
        if done >= len(self):  # the epoch was complete: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        elif done and changed:
            log.warning(
                "resuming mid-epoch with another batch layout (%s: checkpoint, now): the rest of epoch %d is not "
                "the one the interrupted run would have trained", changed, epoch
            )
        self.sampler.start_at(epoch, done * int(self.batch_size or 1))


class _StartedOnFirstBatch(Iterator[Any]):
    def __init__(self, start: Callable[[], Iterator[Any]]):
        self._start = start
        self._iterator: Iterator[Any] | None = None

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class EvaluationSampler(DistributedSampler):
    """Rank r takes dataset indices r, r + world_size, ...: every image exactly once across ranks, no padding
    (see vitcls.distributed.gather_in_dataset_order). A rank can hold one image less than another, or none."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class EvaluationDataLoader(DataLoader):
    """A validation/test loader that yields at least one batch: None when this rank holds no sample."""

    def __len__(self) -> int:
        return max(1, super().__len__())

    def __iter__(self) -> Iterator[Any]:
        if super().__len__() == 0:
            return iter([None])
        return super().__iter__()
