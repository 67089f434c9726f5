"""`vitcls-data check` on a generated messy folder: every kind of problem is found and named."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT, make_image_folder
from messy_data import BAD_FILE_KINDS, make_messy_folder

from vitcls.cli.data import main
from vitcls.data.check import check_folder


def test_check_finds_each_kind_of_problem(tmp_path):
    root = tmp_path / "messy"
    bad = make_messy_folder(root, class_in_one_split=True)
    report = check_folder(root)
    assert not report["ok"]

    reasons = {item["path"]: item["reason"] for item in report["bad_files"]}
    assert set(reasons) == {str(bad[kind]) for kind in BAD_FILE_KINDS}
    assert "0 bytes" in reasons[str(bad["zero_byte"])]
    assert "cannot decode" in reasons[str(bad["truncated"])]
    assert "cannot decode" in reasons[str(bad["random_bytes"])]
    assert (
        "100,000,000 pixels" in reasons[str(bad["bomb"])]
        and "data.max_image_pixels" in reasons[str(bad["bomb"])]
    )
    assert "outside data.root" in reasons[str(bad["outside_symlink"])]
    assert report["symlinks_outside_root"] == [str(bad["outside_symlink"])]

    assert report["splits"]["train"]["non_image_files"] == [str(bad["non_image"])]
    assert report["duplicates_across_splits"] == [
        sorted([str(bad["leak"]), str(root / "train/a/img_000.png")])
    ]
    assert report["duplicates_within_split"] == [
        sorted([str(bad["duplicate_in_train"]), str(root / "train/a/img_001.png")])
    ]
    assert report["empty_classes"] == {"train": ["c"], "test": ["c"]}
    kinds = {p["kind"]: p for p in report["problems"]}
    assert "classes not in train: ['d']" in kinds["class_mismatch"]["message"]
    assert kinds["leakage"]["severity"] == "error" and kinds["duplicate"]["severity"] == "warning"

    # counts, sizes and modes per split and class (the inside symlink and the PNG named .jpg are good images)
    train_b = report["splits"]["train"]["classes"]["b"]
    assert train_b["images"] == 10 and train_b["bad"] == 0
    assert train_b["width"] == [24, 24] and train_b["height"] == [20, 20] and train_b["modes"] == {"RGB": 10}
    train_a = report["splits"]["train"]["classes"]["a"]
    assert train_a == {"images": 9, "bad": 4, "width": [24, 24], "height": [20, 20], "modes": {"RGB": 9}}


def test_pixel_cap_is_a_setting(tmp_path):
    make_image_folder(tmp_path, {"a": 2, "b": 2}, "train")  # 24 x 20 = 480 pixels each
    assert check_folder(tmp_path, max_pixels=480)["ok"]
    report = check_folder(tmp_path, max_pixels=479)
    assert len(report["bad_files"]) == 4 and "over the limit of 479" in report["bad_files"][0]["reason"]


def test_cli_exit_codes_and_json(tmp_path, capsys):
    clean = make_image_folder(tmp_path / "clean", {"a": 2, "b": 2}, "train", seed=1)
    make_image_folder(clean, {"a": 1, "b": 1}, "test", seed=2)
    assert main(["check", str(clean)]) == 0
    assert "ready to train" in capsys.readouterr().out

    messy = tmp_path / "messy"
    bad = make_messy_folder(messy)
    assert main(["check", str(messy)]) == 1
    text = capsys.readouterr().out
    for kind in BAD_FILE_KINDS:
        assert str(bad[kind]) in text, kind
    assert "would break training or bias the metrics" in text

    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_runs_as_a_command(tmp_path):
    bad = make_messy_folder(tmp_path / "messy")
    result = subprocess.run(
        [sys.executable, "-m", "vitcls.cli.data", "check", "--json", str(tmp_path / "messy")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert {item["path"] for item in report["bad_files"]} == {str(bad[kind]) for kind in BAD_FILE_KINDS}


def test_a_symlink_loop_inside_the_root_ends(tmp_path):
    import os

    make_image_folder(tmp_path, {"a": 2, "b": 2}, "train")
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "a" / "loop")
    report = check_folder(tmp_path)
    assert report["splits"]["train"]["classes"]["a"]["images"] == 2 and report["ok"]


def test_eval_class_check_lists_the_difference():
    import pytest

    from vitcls.data.folder import DatasetLayoutError
    from vitcls.run.evaluate import check_same_classes

    with pytest.raises(
        DatasetLayoutError, match=r"missing in the data: \['b'\].*unknown to the model: \['c', 'd'\]"
    ):
        check_same_classes(["a", "b"], ["a", "c", "d"], "/data")
    with pytest.raises(DatasetLayoutError, match="same names in another order"):
        check_same_classes(["b", "a"], ["a", "b"], "/data")
    check_same_classes(["a", "b"], ["a", "b"], "/data")
