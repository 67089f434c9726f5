from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, write_image

from vitcls.data.folder import DatasetLayoutError, scan_folder


def test_split_layout_classes_sorted_and_samples_labelled(image_folder_factory):
    root = image_folder_factory({"zebra": 3, "apple": 2, "mango": 4})
    scan = scan_folder(root)
    assert scan.class_names == ["apple", "mango", "zebra"]
    assert set(scan.splits) == {"train", "test"}
    train = scan.samples("train")
    assert len(train) == 9
    for sample in train:
        assert Path(sample.path).parent.name == scan.class_names[sample.label]


def test_val_folder_and_split_name_aliases_are_recognised(tmp_path):
    classes = {"a": 2, "b": 2}
    for split in ("Training", "Validation", "Test"):
        make_image_folder(tmp_path, classes, split)
    scan = scan_folder(tmp_path)
    assert set(scan.splits) == {"train", "val", "test"}
    assert scan.splits["val"].directory.name == "Validation"


def test_class_folders_only_layout_is_train(tmp_path):
    make_image_folder(tmp_path, {"cat": 3, "dog": 3})
    scan = scan_folder(tmp_path)
    assert set(scan.splits) == {"train"}
    assert scan.class_names == ["cat", "dog"]


def test_extensions_any_case_nested_folders_hidden_and_non_image_files(tmp_path):
    rng = np.random.default_rng(0)
    train = tmp_path / "train"
    for i, ext in enumerate([".JPG", ".jpeg", ".Png", ".bmp", ".webp", ".gif", ".TIF", ".tiff"]):
        write_image(train / "a" / f"x{i}{ext}", rng)
    write_image(train / "a" / "nested" / "deeper.png", rng)
    write_image(train / "b" / "one.png", rng)
    write_image(train / "b" / ".hidden.png", rng)           # hidden: skipped silently
    write_image(train / "b" / ".cache" / "thumb.png", rng)  # hidden folder: skipped
    (train / "b" / "notes.txt").write_text("not an image")
    (train / "b" / "labels.csv").write_text("a,b")
    (train / "README.md").write_text("stray file in the split folder")
    (train / ".DS_Store").write_bytes(b"\0")
    scan = scan_folder(tmp_path)
    assert len(scan.splits["train"].files["a"]) == 9
    assert [Path(p).name for p in scan.splits["train"].files["b"]] == ["one.png"]
    assert scan.num_ignored == 3
    assert "3 files ignored" in scan.summary()


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        scan_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(error.value)
    assert "ROOT/train/<class_name>" in str(error.value)


def test_empty_root_is_an_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no class folders with images"):
        scan_folder(tmp_path)


def test_test_split_with_other_classes_names_missing_and_extra(tmp_path):
    make_image_folder(tmp_path, {"apple": 2, "banana": 2, "cherry": 2}, "train")
    make_image_folder(tmp_path, {"apple": 2, "banana": 2, "durian": 1}, "test")
    with pytest.raises(DatasetLayoutError) as error:
        scan_folder(tmp_path)
    message = str(error.value)
    assert "missing in test: ['cherry']" in message
    assert "extra in test (not in train): ['durian']" in message


def test_empty_class_folder_is_named(tmp_path):
    make_image_folder(tmp_path, {"apple": 2, "banana": 2}, "train")
    (tmp_path / "train" / "cherry").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"\['cherry'\]"):
        scan_folder(tmp_path)


def test_single_class_is_an_error(tmp_path):
    make_image_folder(tmp_path, {"apple": 3}, "train")
    with pytest.raises(DatasetLayoutError, match="at least two"):
        scan_folder(tmp_path)


def test_splits_without_train_is_an_error(tmp_path):
    make_image_folder(tmp_path, {"a": 2, "b": 2}, "test")
    with pytest.raises(DatasetLayoutError, match="no train/ folder"):
        scan_folder(tmp_path)


def test_scan_order_is_deterministic(tmp_path):
    make_image_folder(tmp_path, {"b": 5, "a": 5}, "train")
    assert scan_folder(tmp_path).samples("train") == scan_folder(tmp_path).samples("train")


def test_a_root_one_level_too_high_gets_a_hint(tmp_path):
    make_image_folder(tmp_path / "fruits", {"a": 2, "b": 2}, "train")
    with pytest.raises(DatasetLayoutError, match=f"Did you mean data.root={tmp_path / 'fruits'}"):
        scan_folder(tmp_path)
