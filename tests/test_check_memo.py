"""The decode check remembered across runs (vitcls.data.quality.CheckMemo): unchanged files are not read again,
changed ones are."""

from __future__ import annotations

import os

import pytest
from conftest import compose_config

import vitcls.data.quality as quality
from vitcls.data.quality import CheckMemo, check_files
from vitcls.run.lifecycle import build_datamodule


def count_reads(monkeypatch) -> list[str]:
    reads = []
    check_file = quality.check_file

    def counting(path, max_pixels):
        reads.append(path)
        return check_file(path, max_pixels)

    monkeypatch.setattr(quality, "check_file", counting)
    return reads


def corrupt_keeping_size_and_mtime(path) -> None:
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_unchanged_files_are_not_read_again_and_changed_ones_are(image_folder_factory, tmp_path, monkeypatch):
    root = image_folder_factory({"a": 3, "b": 3}, splits=("train",))
    paths = sorted(str(p) for p in root.rglob("*.png"))
    memo_dir = tmp_path / "memo"
    first = check_files(paths, 10_000, memo=CheckMemo.in_directory(memo_dir, root))
    assert all(check.ok for check in first)

    reads = count_reads(monkeypatch)
    again = check_files(paths, 10_000, memo=CheckMemo.in_directory(memo_dir, root))
    assert again == first and reads == []

    # Same size and mtime: taken as unchanged (the documented assumption), so the memo answers.
    corrupt_keeping_size_and_mtime(paths[0])
    assert check_files(paths, 10_000, memo=CheckMemo.in_directory(memo_dir, root))[0].ok
    # A new mtime: read and found bad.
    os.utime(paths[0], ns=(0, os.stat(paths[0]).st_mtime_ns + 1_000_000))
    rechecked = check_files(paths, 10_000, memo=CheckMemo.in_directory(memo_dir, root))
    assert reads == [paths[0]] and not rechecked[0].ok and rechecked[1:] == first[1:]
    # A lower pixel limit invalidates every entry.
    reads.clear()
    limited = check_files(paths, 100, memo=CheckMemo.in_directory(memo_dir, root))
    assert sorted(reads) == paths and not any(check.ok for check in limited)


def test_a_memo_that_cannot_be_read_or_written_only_costs_time(image_folder_factory, tmp_path, caplog):
    root = image_folder_factory({"a": 2}, splits=("train",))
    paths = sorted(str(p) for p in root.rglob("*.png"))
    memo = CheckMemo.in_directory(tmp_path, root)
    memo.path.write_text("{not json")
    assert all(check.ok for check in check_files(paths, 10_000, memo=CheckMemo(memo.path)))
    blocked = CheckMemo(tmp_path / "a_file" / "memo.json")
    (tmp_path / "a_file").write_text("not a directory")
    assert all(check.ok for check in check_files(paths, 10_000, memo=blocked))
    assert "cannot remember the image checks" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "memo_under"),
    [
        (["feature_cache.enabled=true"], "features"),
        (["data.image_check_cache_dir={tmp}/checks"], "checks"),
        (["feature_cache.enabled=true", "data.image_check_cache_dir={tmp}/checks"], "checks"),
        ([], None),
    ],
)
def test_train_keeps_the_memo_where_configured(image_folder_factory, tmp_path, overrides, memo_under):
    root = image_folder_factory({"a": 4, "b": 4})
    cfg = compose_config(
        "train",
        [
            f"data.root={root}",
            f"feature_cache.dir={tmp_path / 'features'}",
            *[override.format(tmp=tmp_path) for override in overrides],
        ],
    )
    datamodule = build_datamodule(cfg)
    assert "image_check_cache_dir" not in datamodule.hparams
    memos = sorted(tmp_path.rglob("image_checks_*.json"))
    if memo_under is None:
        assert memos == [] and datamodule.check_memo is None
    else:
        assert [memo.parent.name for memo in memos] == [memo_under]
        assert len(datamodule.check_memo.entries) == 16
