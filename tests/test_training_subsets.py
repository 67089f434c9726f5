"""Data efficiency: seeded, stratified, nested subsets of the training split; val and test never change."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import compose_config

from vitcls.config.validation import check_train_config
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.folder import Sample
from vitcls.data.split import stratified_subset
from vitcls.errors import ConfigError


def make_samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(f"/data/{label}/{i}.jpg", label) for label, n in counts.items() for i in range(n)]


def test_subsets_are_stratified_and_nested_across_k_for_one_seed():
    samples = make_samples({0: 60, 1: 30, 2: 8})
    subsets = {k: stratified_subset(samples, per_class=k, seed=3) for k in (1, 5, 10, 50)}
    assert Counter(s.label for s in subsets[5]) == {0: 5, 1: 5, 2: 5}
    assert Counter(s.label for s in subsets[50]) == {0: 50, 1: 30, 2: 8}  # a small class keeps all it has
    for small, large in ((1, 5), (5, 10), (10, 50)):
        assert set(subsets[small]) < set(subsets[large])
    assert subsets[10] == sorted(subsets[10], key=samples.index)  # input order kept
    assert subsets[10] == stratified_subset(list(samples), per_class=10, seed=3)
    assert set(subsets[10]) != set(stratified_subset(samples, per_class=10, seed=4))


def test_fractions_are_stratified_and_nested():
    samples = make_samples({0: 100, 1: 20, 2: 3})
    quarter = stratified_subset(samples, fraction=0.25, seed=0)
    half = stratified_subset(samples, fraction=0.5, seed=0)
    assert Counter(s.label for s in quarter) == {0: 25, 1: 5, 2: 1}
    assert set(quarter) < set(half)
    assert stratified_subset(samples, fraction=1.0, seed=0) == samples


@pytest.mark.parametrize(
    ("per_class", "fraction", "message"),
    [(5, 0.5, "set one of them"), (0, None, "train_per_class must be a positive integer"),
     (None, 1.5, "train_fraction must be a number in (0, 1]"), (None, 0.0, "train_fraction")],
)
def test_bad_subset_settings_are_refused_before_any_work(per_class, fraction, message, tmp_path):
    overrides = [f"paths.output_dir={tmp_path}", "data.root=/nowhere", "model.pretrained=false",
                 f"data.train_per_class={'null' if per_class is None else per_class}",
                 f"data.train_fraction={'null' if fraction is None else fraction}"]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        check_train_config(compose_config("train", overrides))


def test_val_and_test_stay_identical_across_sizes_and_seeds(image_folder_factory):
    root = image_folder_factory({"a": 30, "b": 20, "c": 12}, splits=("train", "test"))
    full = ImageFolderDataModule(root, num_workers=0).splits

    def splits(**kwargs):
        return ImageFolderDataModule(root, num_workers=0, **kwargs).splits

    for kwargs in ({"train_per_class": 2, "subset_seed": 1}, {"train_per_class": 5, "subset_seed": 1},
                   {"train_per_class": 5, "subset_seed": 2}, {"train_fraction": 0.5, "subset_seed": 1}):
        subset = splits(**kwargs)
        assert subset["val"] == full["val"] and subset["test"] == full["test"], kwargs
        assert set(subset["train"]) <= set(full["train"])
    k2, k5 = splits(train_per_class=2, subset_seed=1)["train"], splits(train_per_class=5, subset_seed=1)["train"]
    assert Counter(s.label for s in k5) == {0: 5, 1: 5, 2: 5} and set(k2) < set(k5)
    # the composed config: seeds move the subset, not the val/test split
    cfg = compose_config("train", ["data.root=/x", "seed=7"])
    assert (cfg.data.subset_seed, cfg.data.split_seed, cfg.data.shuffle_seed) == (7, 42, 7)
