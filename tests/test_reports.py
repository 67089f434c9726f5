import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import vitcls.io
from vitcls.io import write_json_atomic, write_text_atomic
from vitcls.metrics import per_class_report
from vitcls.reporting.plots import (
    GalleryItem,
    save_confusion_matrix,
    save_prediction_gallery,
    save_report,
)

TRICKY_NAMES = [
    "$x$",
    "$a^b^c$",
    "a_b^c",
    "Äpfel süß Ωμέγα",
    "50% $ off",
    "back\\slash",
    "long " * 12 + "name",
]


def _random_confusion(num_classes: int, never_predicted: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, size=500)
    y_pred = rng.integers(0, num_classes, size=500)
    y_pred[y_pred == never_predicted] = (never_predicted + 1) % num_classes
    labels = list(range(num_classes))
    return y_true, y_pred, confusion_matrix(y_true, y_pred, labels=labels)


def _strong_red(png_path) -> np.ndarray:
    rgb = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)


def _files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("as_tensor", [False, True])
def test_per_class_report_matches_sklearn(as_tensor):
    num_classes = 6
    y_true, y_pred, confusion = _random_confusion(num_classes, never_predicted=2)
    assert confusion[:, 2].sum() == 0  # class 2 exercises precision's zero division
    names = [f"class{i}" for i in range(num_classes)]
    report = per_class_report(torch.from_numpy(confusion) if as_tensor else confusion, names)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_classes)), zero_division=0
    )
    assert [row["class"] for row in report] == names
    np.testing.assert_allclose([row["precision"] for row in report], precision)
    np.testing.assert_allclose([row["recall"] for row in report], recall)
    np.testing.assert_allclose([row["f1"] for row in report], f1)
    assert [row["support"] for row in report] == support.tolist()
    assert all(type(row["support"]) is int and type(row["f1"]) is float for row in report)


def test_per_class_report_class_without_samples_is_zero():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]])
    row = per_class_report(confusion, ["a", "b", "c"])[1]
    assert row == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_per_class_report_rejects_mismatched_names():
    with pytest.raises(ValueError, match="shape"):
        per_class_report(np.zeros((3, 3)), ["a", "b"])


@pytest.mark.parametrize("num_classes", [3, 60])
def test_save_confusion_matrix_csv_round_trips_and_png_opens(tmp_path, num_classes):
    _, _, confusion = _random_confusion(num_classes, never_predicted=0, seed=num_classes)
    names = (TRICKY_NAMES + [f"class_{i}" for i in range(num_classes)])[:num_classes]
    out_dir = tmp_path / "new" / "dir"
    paths = save_confusion_matrix(torch.from_numpy(confusion), names, out_dir, title="$x$ & a_b^c")

    assert paths == {"csv": out_dir / "confusion_matrix.csv", "png": out_dir / "confusion_matrix.png"}
    with open(paths["csv"], encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["true\\pred", *names]
    assert [row[0] for row in rows] == names
    np.testing.assert_array_equal(np.array([row[1:] for row in rows], dtype=int), confusion)

    with Image.open(paths["png"]) as image:
        width, height = image.size
    assert min(width, height) >= 400 and max(width, height) <= 6000
    if num_classes == 60:  # grows with the class count, roughly a pixel budget per cell
        assert min(width, height) >= 60 * 20
    assert _files(out_dir) == ["confusion_matrix.csv", "confusion_matrix.png"]  # no temp debris


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # an emoji is drawn as a box, not a crash
def test_save_confusion_matrix_tricky_names_all_at_once(tmp_path):
    names = [*TRICKY_NAMES, "🍎 apple"]
    confusion = np.arange(len(names) ** 2).reshape(len(names), -1)
    paths = save_confusion_matrix(confusion, names, tmp_path, stem="tricky")
    assert paths["png"].stat().st_size > 0


def test_save_report_markdown_and_csv(tmp_path):
    names = ["apple", "banana | split", "$x$", "a_b^c"]
    confusion = np.array([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, 4]])
    metrics = {"accuracy": 12 / 16, "macro_f1": 0.123456789, "loss": 1.5}
    paths = save_report(metrics, confusion, names, tmp_path / "out")

    markdown = paths["md"].read_text(encoding="utf-8")
    for name in ["apple", "banana \\| split", "$x$", "a_b^c"]:
        assert f"| {name} |" in markdown
    assert "| accuracy | 0.7500 |" in markdown
    assert "| macro_f1 | 0.1235 |" in markdown
    assert "| loss | 1.5000 |" in markdown
    assert "| apple | 0.6250 | 0.8333 | 0.7143 | 6 |" in markdown
    assert "| $x$ | 0.0000 | 0.0000 | 0.0000 | 0 |" in markdown

    with open(paths["per_class_csv"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == names
    expected = per_class_report(confusion, names)
    for row, want in zip(rows, expected, strict=True):
        assert float(row["f1"]) == pytest.approx(want["f1"])
        assert int(row["support"]) == want["support"]


def _gallery_items(wrong: set[int], count: int = 6) -> list[GalleryItem]:
    sizes = [(64, 64), (120, 40), (30, 90), (200, 150), (50, 50), (80, 20)]
    items = []
    for i in range(count):
        image = Image.new("RGB", sizes[i % len(sizes)], (40, 90 + 20 * (i % 5), 200))
        true_label = TRICKY_NAMES[i % len(TRICKY_NAMES)]
        pred_label = f"wrong class {i}" if i in wrong else true_label
        items.append(GalleryItem(image, true_label, pred_label, score=0.5 + i / 20))
    return items


def test_prediction_gallery_frames_only_misclassified(tmp_path):
    mixed = save_prediction_gallery(_gallery_items(wrong={1, 4}), tmp_path / "g" / "mixed.png", title="$t$")
    correct = save_prediction_gallery(_gallery_items(wrong=set()), tmp_path / "correct.png")

    # A frame edge is a long straight run of red pixels, unlike red title text.
    longest_red_row = _strong_red(mixed).sum(axis=1).max()
    longest_red_column = _strong_red(mixed).sum(axis=0).max()
    assert longest_red_row >= 80 and longest_red_column >= 80
    assert _strong_red(correct).sum() == 0
    assert _files(tmp_path / "g") == ["mixed.png"]


@pytest.mark.parametrize("count", [1, 5, 64])
def test_prediction_gallery_sizes(tmp_path, count):
    path = save_prediction_gallery(_gallery_items(wrong={0}, count=count), tmp_path / "g.png", columns=8)
    with Image.open(path) as image:
        width, height = image.size
    assert width > 100 and height > 100
    if count == 64:
        assert height > width / 2  # 8 rows of 8 columns


def test_prediction_gallery_leaves_caller_images_alone(tmp_path):
    items = _gallery_items(wrong=set(), count=1)
    items[0].image = Image.new("RGB", (1000, 500))
    save_prediction_gallery(items, tmp_path / "g.png")
    assert items[0].image.size == (1000, 500)


def test_write_json_atomic_round_trip(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "m.json", {"b": 1, "a": tmp_path})
    assert json.loads(path.read_text()) == {"b": 1, "a": str(tmp_path)}
    assert list(json.loads(path.read_text())) == ["b", "a"]  # insertion order kept


class _Unprintable:
    def __str__(self):
        raise RuntimeError("cannot serialise")


def test_write_json_atomic_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"accuracy": 0.5})
    before = path.read_text()
    with pytest.raises(RuntimeError, match="cannot serialise"):
        write_json_atomic(path, {"accuracy": 0.9, "bad": _Unprintable()})
    assert path.read_text() == before
    assert _files(tmp_path) == ["metrics.json"]


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_atomic_write_failure_during_replace_cleans_up(tmp_path, monkeypatch, umask_027):
    path = write_text_atomic(tmp_path / "note.txt", "old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(vitcls.io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    with pytest.raises(OSError, match="disk full"):
        save_prediction_gallery(_gallery_items(wrong={0}, count=2), tmp_path / "g.png")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert _files(tmp_path) == ["note.txt"]
    assert os.stat(path).st_mode & 0o777 == 0o640  # what open(path, "w") gives under umask 027


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_of_a_plain_write_under_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        files = [
            write_text_atomic(tmp_path / "a.txt", "x"),
            write_json_atomic(tmp_path / "b.json", {}),
            vitcls.io.write_bytes_atomic(tmp_path / "c.bin", b"x"),
        ]
    finally:
        os.umask(previous)
    for path in files:
        assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777 == 0o666 & ~mask, path
