from collections import Counter

import pytest
import torch

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.dataset import default_num_workers
from vitcls.errors import ConfigError
from vitcls.models.backbone import create_backbone
from vitcls.preprocessing import resolve_data_config


@pytest.fixture(scope="module")
def data_config():
    return resolve_data_config(create_backbone("vit_tiny_patch16_224", img_size=32))


def test_val_is_stratified_from_train_when_absent(image_folder_factory, data_config):
    root = image_folder_factory({"a": 10, "b": 20, "c": 5})
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, val_fraction=0.2)
    splits = dm.splits
    assert Counter(s.label for s in splits["val"]) == {0: 2, 1: 4, 2: 1}
    assert len(splits["train"]) == 28 and len(splits["test"]) == 35
    assert not {s.path for s in splits["train"]} & {s.path for s in splits["val"]}
    again = ImageFolderDataModule(root, batch_size=4, num_workers=0, val_fraction=0.2).splits
    assert again == splits


def test_class_folders_only_root_is_split_three_ways(image_folder_factory):
    root = image_folder_factory({"a": 10, "b": 10}, splits=("",))
    splits = ImageFolderDataModule(root, val_fraction=0.25, test_fraction=0.2).splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 4, "test": 4}
    paths = [s.path for split in splits.values() for s in split]
    assert len(paths) == len(set(paths)) == 20


def test_val_folder_is_used_as_is(image_folder_factory):
    root = image_folder_factory({"a": 4, "b": 4}, splits=("train", "val", "test"))
    splits = ImageFolderDataModule(root).splits
    assert len(splits["train"]) == 8 and len(splits["val"]) == 8


def test_batches_have_the_models_input_size_and_labels(image_folder_factory, data_config):
    root = image_folder_factory({"a": 6, "b": 6})
    dm = ImageFolderDataModule(root, batch_size=5, num_workers=2)
    dm.set_data_config(data_config)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers and not loader.pin_memory
    images, labels = next(iter(loader))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert set(labels.tolist()) <= {0, 1}
    # normalised with mean = std = 0.5: values in [-1, 1]
    assert images.min() >= -1.0001 and images.max() <= 1.0001


def test_train_transform_equals_eval_transform_without_augmentation(image_folder_factory, data_config):
    root = image_folder_factory({"a": 3, "b": 3})
    dm = ImageFolderDataModule(root, batch_size=2, num_workers=0)
    dm.set_data_config(data_config)
    dm.setup("fit")
    train, test = dm.datasets["train"], dm.datasets["test"]
    assert str(train.transform) == str(test.transform)
    assert torch.equal(train[0][0], train[0][0])

    augmented = ImageFolderDataModule(root, batch_size=2, num_workers=0, train_augment={"scale": [0.5, 1.0], "hflip": 0.5})
    augmented.set_data_config(data_config)
    augmented.setup("fit")
    assert "RandomResizedCrop" in str(augmented.datasets["train"].transform)
    assert "RandomResizedCrop" not in str(augmented.datasets["test"].transform)


def test_crop_pct_override_changes_the_resize(image_folder_factory, data_config):
    root = image_folder_factory({"a": 2, "b": 2})
    dm = ImageFolderDataModule(root, crop_pct=1.0)
    dm.set_data_config(data_config)
    assert dm.data_config["crop_pct"] == 1.0
    dm.setup("test")
    assert "Resize(size=32" in str(dm.datasets["test"].transform)


def test_default_workers_scale_with_devices():
    assert 1 <= default_num_workers(1) <= 8
    assert default_num_workers(64) == 1


def test_training_drops_the_ragged_last_batch_and_refuses_a_batch_larger_than_the_training_set(
        image_folder_factory, data_config):
    root = image_folder_factory({"a": 6, "b": 5}, splits=("train",))  # 9 train images after val/test split
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, val_fraction=0.2, test_fraction=0.2)
    dm.set_data_config(data_config)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 7
    assert [len(labels) for _, labels in dm.train_dataloader()] == [4]
    assert sum(len(labels) for _, labels in dm.val_dataloader()) == len(dm.datasets["val"])
    small = ImageFolderDataModule(root, batch_size=8, num_workers=0)
    small.set_data_config(data_config)
    with pytest.raises(ConfigError, match=r"data.batch_size=8 is larger than the training set \(7 images.*batch_size=7"):
        small.setup("fit")
    small.setup("test")  # evaluation never builds training batches
