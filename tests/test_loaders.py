"""The training loader resumes at any epoch and batch with the same order and the same augmentation draws,
whatever the worker processes; an evaluation loader of a rank without images still yields one (empty) batch."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import make_image_folder

from vitcls.data.dataset import ImageFileDataset
from vitcls.data.folder import Sample
from vitcls.data.loaders import EpochSampler, EvaluationDataLoader, EvaluationSampler, ResumableDataLoader

BATCH = 3


def draws(image):
    """A random transform that reports what it drew from each generator augmentations use."""
    return torch.tensor([torch.rand(1).item(), random.random(), float(np.random.rand())])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("loaders"), {"a": 6, "b": 6})
    samples = [Sample(str(path), label) for label, name in enumerate(("a", "b"))
               for path in sorted((root / name).iterdir())]
    return ImageFileDataset(samples, transform=draws)


def loader(dataset, workers, seeded=True, num_replicas=1, rank=0):
    sampler = EpochSampler(dataset, num_replicas=num_replicas, rank=rank, seed=7, seeded=seeded)
    # As the DataModule does: worker base seeds from a generator of the loader's own, not the global one.
    return ResumableDataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers,
                               persistent_workers=workers > 0, drop_last=True,
                               generator=torch.Generator().manual_seed(7))


def epoch(loader_, number):
    loader_.sampler.set_epoch(number)
    return [(draws_.clone(), labels.clone()) for draws_, labels in loader_]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches_a, batches_b, strict=True)
    )


def test_the_draws_depend_on_epoch_and_position_only_not_on_the_workers(dataset):
    in_process, two_workers = epoch(loader(dataset, 0), 1), epoch(loader(dataset, 2), 1)
    assert same(in_process, two_workers)
    assert not same(in_process, epoch(loader(dataset, 0), 2))  # another epoch: other order and draws
    values = torch.cat([draws_ for draws_, _ in in_process])
    assert len(torch.unique(values[:, 0])) == len(values)  # a seed per sample, not one per batch


def test_an_iterator_made_before_the_epoch_is_set_serves_that_epoch(dataset):
    # What Lightning does on resume: the iterator exists before set_epoch; worker processes would fetch at once.
    expected = epoch(loader(dataset, 2), 3)
    resumed = loader(dataset, 2)
    iterator = iter(resumed)
    resumed.sampler.set_epoch(3)
    assert same([(d.clone(), t.clone()) for d, t in iterator], expected)


@pytest.mark.parametrize(("workers", "done"), [(0, 2), (2, 1), (1, 0)])
def test_a_loader_restored_from_its_state_yields_the_rest_of_the_epoch(dataset, workers, done):
    interrupted = loader(dataset, 2)
    full = epoch(interrupted, 1)
    interrupted.batches_done = lambda: done
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches_done"], state["num_batches"]) == (1, done, len(full))

    resumed = loader(dataset, workers)  # any number of workers
    resumed.load_state_dict(state)
    assert same([(d.clone(), t.clone()) for d, t in resumed], full[done:])
    assert same(epoch(resumed, 2), epoch(loader(dataset, 0), 2))  # later epochs are whole again


def test_a_state_saved_after_the_last_batch_resumes_at_the_next_epoch(dataset):
    finished = loader(dataset, 0)
    finished.sampler.set_epoch(4)
    finished.batches_done = lambda: len(finished)
    resumed = loader(dataset, 0)
    resumed.load_state_dict(finished.state_dict())
    assert same([(d.clone(), t.clone()) for d, t in resumed], epoch(loader(dataset, 0), 5))


def test_augmenting_in_the_training_process_leaves_its_random_numbers_alone(dataset):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    epoch(loader(dataset, 0), 0)
    after = (torch.rand(1).item(), random.random(), float(np.random.rand()))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    assert after == (torch.rand(1).item(), random.random(), float(np.random.rand()))


def test_a_rank_without_images_gets_one_empty_evaluation_batch(dataset):
    two = torch.utils.data.Subset(dataset, [0, 1])
    shards = [EvaluationDataLoader(two, batch_size=BATCH, sampler=EvaluationSampler(two, 3, rank)) for rank in range(3)]
    assert [len(shard) for shard in shards] == [1, 1, 1]
    assert list(shards[2]) == [None]
    assert sorted(int(labels) for shard in shards[:2] for _, labels in shard) == [0, 0]  # both class "a", once each
