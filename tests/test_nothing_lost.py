"""Crash-safety of result files, and class names (folder names) that cannot break reports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from vitcls.io import write_json_atomic
from vitcls.reporting.plots import (
    GalleryItem,
    _confusion_figure,
    save_prediction_gallery,
    save_report,
)

# Runs in a child process: Path.write_text writes half the text, then the process dies on the spot
# (os._exit: no exception handlers, no cleanup), as a kill -9 or power cut would.
CRASH_MIDWAY = """
import json, os, sys
from pathlib import Path
from vitcls import io

def crash_midway(self, text, encoding=None):
    with open(self, "w", encoding=encoding) as handle:
        handle.write(text[: len(text) // 2])
        handle.flush()
    os._exit(9)

Path.write_text = crash_midway
new = {"accuracy": 0.9, "padding": "x" * 10000}
if sys.argv[2] == "atomic":
    io.write_json_atomic(sys.argv[1], new)
else:
    Path(sys.argv[1]).write_text(json.dumps(new))
"""


def crash_while_writing(path, how: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASH_MIDWAY, str(path), how],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 9, result.stderr


def test_a_crash_while_writing_summary_json_leaves_the_previous_version(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"accuracy": 0.5})
    crash_while_writing(path, "atomic")
    assert json.loads(path.read_text()) == {"accuracy": 0.5}

    # the same crash during a plain write destroys the file: the test above can fail
    crash_while_writing(path, "plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())


HOSTILE_NAMES = ["<script>alert(1)</script>", "two\nlines", "tab\there", "esc\x1b[31mred", "a | b", "x" * 300]


def test_class_names_are_inert_in_the_markdown_report(tmp_path):
    confusion = np.eye(len(HOSTILE_NAMES), dtype=int)
    markdown = save_report({"acc": 1.0}, confusion, HOSTILE_NAMES, tmp_path)["md"].read_text()
    assert "<script>" not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "| two\\nlines |" in markdown and "| tab\\there |" in markdown and "\x1b" not in markdown
    assert "| a \\| b |" in markdown
    table = markdown.split("## Per class")[1].strip().splitlines()
    assert len(table) == 2 + len(HOSTILE_NAMES)  # one row per class: no name broke a line


def test_class_names_are_single_line_short_labels_in_figures(tmp_path):
    fig = _confusion_figure(np.eye(len(HOSTILE_NAMES), dtype=int), HOSTILE_NAMES, "t")
    labels = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert labels[1] == "two\\nlines" and labels[3] == "esc\\x1b[31mred"
    assert all("\n" not in label and len(label) <= 32 for label in labels)
    items = [GalleryItem(Image.new("RGB", (8, 8)), name, name, 0.5) for name in HOSTILE_NAMES]
    assert save_prediction_gallery(items, tmp_path / "gallery.png").stat().st_size > 0
