"""data.on_bad_image: `error` stops before training with the full list; `skip` trains without the bad files."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_config, make_image_folder, train_in_process
from conftest import build_module_of as build_module
from messy_data import BAD_FILE_KINDS, make_messy_folder

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.dataset import ImageDecodeError
from vitcls.data.quality import BadImagesError
from vitcls.models.backbone import create_backbone
from vitcls.preprocessing import resolve_data_config


def test_error_policy_stops_before_training_and_lists_every_bad_file(tmp_path):
    root = tmp_path / "messy"
    bad = make_messy_folder(root)
    with pytest.raises(BadImagesError) as caught:
        train_in_process(tmp_path / "run", f"data.root={root}")
    message = str(caught.value)
    for kind in BAD_FILE_KINDS:
        assert str(bad[kind]) in message, kind
    assert "5 bad image file(s)" in message
    assert "train: ['c']" in message and "data.on_bad_image=skip" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_policy_trains_without_the_bad_files_and_counts_them(tmp_path, caplog):
    root = tmp_path / "messy"
    bad = make_messy_folder(root)
    with caplog.at_level(logging.WARNING):
        summary = train_in_process(
            tmp_path / "run", f"data.root={root}", "data.on_bad_image=skip", "trainer.max_epochs=1"
        )
    assert summary["skipped_files"] == 5
    assert set(summary["skipped"]) == {str(bad[kind]) for kind in BAD_FILE_KINDS}
    assert summary["class_names"] == ["a", "b"]  # the empty class folder c is left out
    # train: a has 8 + 1 duplicate good images, b 8 + inside link + png-as-jpg; test: 3 + leak, 3
    assert sum(summary["num_samples"][s] for s in ("train", "val")) == 9 + 10
    assert summary["num_samples"]["test"] == 7
    log = caplog.text
    for kind in BAD_FILE_KINDS:
        assert f"skipping bad image {bad[kind]}" in log, kind
    assert "leaving out class folders without usable images" in log and "['c']" in log
    assert "appear in more than one split" in log and str(bad["leak"]) in log


@pytest.fixture(scope="module")
def data_config():
    return resolve_data_config(create_backbone("vit_tiny_patch16_224", img_size=32))


def test_files_that_go_bad_after_the_scan_never_kill_an_epoch(image_folder_factory, data_config):
    root = image_folder_factory({"a": 10, "b": 10})
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=2, on_bad_image="skip", drop_last=False)
    dm.set_data_config(data_config)
    dm.setup("fit")
    truncated = dm.splits["train"][3].path
    deleted = dm.splits["test"][0].path
    with open(truncated, "r+b") as handle:
        handle.truncate(50)
    (root / deleted).unlink()

    assert sum(len(labels) for _, labels in dm.train_dataloader()) == len(dm.splits["train"]) - 1
    assert sum(len(labels) for _, labels in dm.test_dataloader()) == len(dm.splits["test"]) - 1
    skipped = dm.skipped_files()
    assert set(skipped) == {truncated, deleted}
    assert "cannot decode" in skipped[truncated] and "missing" in skipped[deleted]

    strict = ImageFolderDataModule(root, batch_size=4, num_workers=0, on_bad_image="error", drop_last=False)
    with pytest.raises(BadImagesError, match=truncated):
        strict.scan()


def test_a_batch_whose_images_all_went_bad_is_skipped_and_test_metrics_count_real_images(
    image_folder_factory, data_config
):
    import lightning as L

    root = image_folder_factory({"a": 6, "b": 6})
    cfg = compose_config("train", [f"data.root={root}", "paths.output_dir=/unused", *FAST_OVERRIDES])
    module = build_module(cfg, ["a", "b"])
    dm = ImageFolderDataModule(root, batch_size=4, eval_batch_size=3, num_workers=0, on_bad_image="skip")
    dm.set_data_config(module.data_config)
    dm.setup("test")
    for sample in dm.splits["test"][:3]:  # the whole first test batch
        (root / sample.path).unlink()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.test(module, datamodule=dm, verbose=False)
    assert int(module.confusion_matrices["test"][0].sum()) == len(dm.splits["test"]) - 3
    assert len(module.head_predictions("test")) == len(dm.splits["test"]) - 3
    assert len(dm.skipped_files()) == 3


def test_strict_loader_names_a_file_that_went_bad(image_folder_factory, data_config):
    root = image_folder_factory({"a": 4, "b": 4})
    dm = ImageFolderDataModule(root, batch_size=2, num_workers=0)
    dm.set_data_config(data_config)
    dm.setup("test")
    path = dm.splits["test"][0].path
    (root / path).write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=f"{path}.*empty file.*data.on_bad_image=skip"):
        next(iter(dm.test_dataloader()))


def test_an_empty_class_folder_is_an_error_by_default(tmp_path):
    make_image_folder(tmp_path, {"a": 3, "b": 3}, "train")
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(BadImagesError, match=r"train: \['c'\]"):
        ImageFolderDataModule(tmp_path).scan()
    assert ImageFolderDataModule(tmp_path, on_bad_image="skip").class_names == ["a", "b"]


def test_tensor_sanity(image_folder_factory):  # the skip collate keeps default_collate's batch layout
    from vitcls.data.dataset import collate_skipping_bad

    batch = collate_skipping_bad([(torch.zeros(3, 2, 2), 0), None, (torch.ones(3, 2, 2), 1)])
    assert batch[0].shape == (2, 3, 2, 2) and batch[1].tolist() == [0, 1]
    assert collate_skipping_bad([None, None]) is None
