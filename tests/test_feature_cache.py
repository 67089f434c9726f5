"""Cached backbone features: keys that change with what the features depend on, and runs that
train the head on them with the same results as the uncached frozen run."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_config, tiny_module

from vitcls.cli.train import run_training as run
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.feature_store import FeatureStore
from vitcls.errors import ConfigError
from vitcls.run.inputs import feature_keys


def classifier(seed=0, **backbone):
    torch.manual_seed(seed)
    return tiny_module("linear", train_blocks="none", class_names=["a", "b"], backbone=backbone)


def keys(root, module, **data):
    images = ImageFolderDataModule(root, num_workers=0, **{"batch_size": 4, **data})
    images.set_data_config(module.data_config)
    images.setup()
    (keys_of_the_tap,) = feature_keys(images, module, "32-true")
    return keys_of_the_tap


@pytest.fixture
def folder(image_folder_factory):
    return image_folder_factory({"a": 4, "b": 4})


def test_keys_are_stable_for_the_same_inputs(folder):
    assert keys(folder, classifier()) == keys(folder, classifier())
    assert len(set(keys(folder, classifier()).values())) == 3  # one per split


def test_touching_an_image_invalidates_only_its_split(folder):
    module = classifier()
    before = keys(folder, module)
    image = folder / "test" / "a" / "img_000.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = keys(folder, module)
    assert after["test"] != before["test"]
    assert after["train"] == before["train"] and after["val"] == before["val"]


def test_changing_the_transform_invalidates_every_split(folder):
    module = classifier()
    before = keys(folder, module)
    after = keys(folder, module, crop_pct=1.0)
    assert all(after[split] != before[split] for split in before)


@pytest.mark.parametrize("change", [{"seed": 1}, {"depth": 6}, {"name": "vit_small_patch16_224"}])
def test_changing_the_backbone_invalidates_every_split(folder, change):
    base = keys(folder, classifier())
    changed = keys(folder, classifier(**change))
    assert all(changed[split] != base[split] for split in base)


def test_settings_that_leave_features_unchanged_keep_the_key(folder):
    assert keys(folder, classifier(drop_path_rate=0.1)) == keys(folder, classifier())


def train(tmp_path, name, root, *overrides):
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={tmp_path / name}",
            *FAST_OVERRIDES,
            f"data.root={root}",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "head=mlp",
            "head.dropout=0.2",
            f"feature_cache.dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )
    return run(cfg)


def test_cached_run_equals_the_uncached_frozen_run(image_folder_factory, tmp_path):
    root = image_folder_factory(
        {"red": 12, "green": 12, "blue": 12},
        colours={"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)},
    )
    # One DataLoader worker: persistent workers change how the loaders draw from the global RNG.
    uncached = train(tmp_path, "uncached", root, "model.train_blocks=none", "data.num_workers=1")
    cached = train(
        tmp_path, "cached", root, "model.train_blocks=none", "data.num_workers=1", "feature_cache.enabled=true"
    )
    entries = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(entries) == 3
    # one entry per split, saying what it stands for, with one feature row (CLS: 192 values) per image
    store = FeatureStore(tmp_path / "cache")
    described = {info.description["split"]: info for info in store.entries()}
    assert sorted(described) == ["test", "train", "val"]
    labels = {}
    for split, info in described.items():
        assert info.state == "complete" and info.description["tap"]["features"] == "cls"
        tensors = store.load(info.key, verify=True)
        assert tensors["features"].shape == (len(tensors["labels"]), 192)
        labels[split] = tensors["labels"].tolist()
    # 12 images per class in train/ (split into train and val) and in test/
    assert sorted(labels["train"] + labels["val"]) == sorted(labels["test"]) == sorted([0, 1, 2] * 12)
    stamps = [p.stat().st_mtime_ns for p in entries]
    again = train(
        tmp_path, "again", root, "model.train_blocks=none", "data.num_workers=1", "feature_cache.enabled=true"
    )
    assert [p.stat().st_mtime_ns for p in entries] == stamps  # loaded, not recomputed

    for summary in (cached, again):
        assert summary["test"].keys() == uncached["test"].keys()
        for name, value in uncached["test"].items():
            assert summary["test"][name] == pytest.approx(value, abs=1e-5), name
        assert summary["best_epoch"] == uncached["best_epoch"]
        assert summary["global_steps"] == uncached["global_steps"]
    states = [torch.load(s["best_ckpt"], weights_only=True) for s in (uncached, cached)]
    assert states[0]["state_dict"].keys() == states[1]["state_dict"].keys()  # full backbone: eval.py works
    for key, value in states[0]["state_dict"].items():
        torch.testing.assert_close(states[1]["state_dict"][key], value, msg=key)
    assert states[1]["datamodule_hyper_parameters"] == states[0]["datamodule_hyper_parameters"]


def test_feature_cache_needs_a_backbone_whose_stem_is_frozen(image_folder_factory, tmp_path):
    # (Training augmentation is cached as augmented views: tests/test_cached_views.py.)
    root = image_folder_factory({"a": 4, "b": 4})
    with pytest.raises(
        ConfigError, match=r"feature_cache\.enabled=true needs a frozen backbone \(model\.train_blocks=none\)"
    ):
        train(tmp_path, "run", root, "feature_cache.enabled=true", "model.train_blocks=all")
