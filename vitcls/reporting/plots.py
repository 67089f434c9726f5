"""Evaluation results as files a researcher reads: confusion matrices, reports, galleries.

Figures are drawn on a bare `matplotlib.figure.Figure` (rendered by Agg on `savefig`), never through
pyplot, so this module touches no global plotting state and is safe to call from worker threads.
Every file is written atomically (`vitcls.io`).
"""

from __future__ import annotations

import csv
import html
import io
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from vitcls.io import atomic_write, write_text_atomic
from vitcls.metrics import confusion_counts, per_class_report, safe_divide

# Class names are user folder names: `$`, `_`, `^` must be drawn as typed, not as mathtext/LaTeX.
_LITERAL_TEXT = {"parse_math": False, "usetex": False}
_ANNOTATE_MAX_CLASSES = 30
_TICK_LABEL_CHARS = 32
_GALLERY_LABEL_CHARS = 24
_GALLERY_THUMBNAIL = (384, 384)
_DPI = 150
_WRONG = "#d62728"
_RIGHT = "#2ca02c"


def _save_figure(fig: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight"))


def _one_line(text: str) -> str:
    """Control characters (a folder name may hold a newline or an escape sequence) shown escaped."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char for char in text)


def _truncate(text: str, limit: int) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    n = len(class_names)
    annotate = n <= _ANNOTATE_MAX_CLASSES
    cell_inches = 0.55 if annotate else 0.22
    label_chars = min(max(len(name) for name in class_names), _TICK_LABEL_CHARS)
    margin_inches = 1.5 + 0.07 * label_chars  # room for the tick labels and axis titles
    side = max(n * cell_inches, 2.5) + margin_inches
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")  # +1 inch for the colour bar
    ax = fig.add_subplot()

    recall = safe_divide(counts, counts.sum(axis=1, keepdims=True))
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="recall (row-normalised)")

    labels = [_truncate(name, _TICK_LABEL_CHARS) for name in class_names]
    tick_size = 9 if annotate else 7
    ax.set_xticks(
        range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size, **_LITERAL_TEXT
    )
    ax.set_yticks(range(n), labels, fontsize=tick_size, **_LITERAL_TEXT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, **_LITERAL_TEXT)
    if annotate:
        for (i, j), count in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if recall[i, j] > 0.5 else "black",
            )
    return fig


def save_confusion_matrix(
    confusion: Any,
    class_names: list[str],
    out_dir: str | Path,
    stem: str = "confusion_matrix",
    title: str | None = None,
    png: bool = True,
) -> dict[str, Path]:
    """Write `{stem}.csv` (raw counts) and, with `png`, `{stem}.png` (heatmap coloured by recall, annotated
    with counts)."""
    counts = confusion_counts(confusion, len(class_names))
    out_dir = Path(out_dir)
    rows = [["true\\pred", *class_names]] + [
        [name, *row] for name, row in zip(class_names, counts.tolist(), strict=True)
    ]
    csv_path = write_text_atomic(out_dir / f"{stem}.csv", _csv_text(rows))
    if not png:
        return {"csv": csv_path}
    fig = _confusion_figure(counts, class_names, title or "Confusion matrix")
    png_path = _save_figure(fig, out_dir / f"{stem}.png")
    return {"csv": csv_path, "png": png_path}


def _markdown_cell(text: str) -> str:
    """A class name as inert table text: no cell split (|), no line break, no HTML (<script>)."""
    return html.escape(_one_line(text), quote=False).replace("|", "\\|")


def save_report(
    metrics: dict[str, float],
    confusion: Any,
    class_names: list[str],
    out_dir: str | Path,
    stem: str = "report",
) -> dict[str, Path]:
    """Write `{stem}.md` (overall metrics and per-class table) and `{stem}_per_class.csv`."""
    per_class = per_class_report(confusion, class_names)
    out_dir = Path(out_dir)
    lines = ["# Evaluation report", "", "## Overall", "", "| metric | value |", "| --- | ---: |"]
    lines += [f"| {_markdown_cell(key)} | {float(value):.4f} |" for key, value in metrics.items()]
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | f1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {_markdown_cell(row['class'])} | {row['precision']:.4f} | {row['recall']:.4f} "
        f"| {row['f1']:.4f} | {row['support']} |"
        for row in per_class
    ]
    md_path = write_text_atomic(out_dir / f"{stem}.md", "\n".join(lines) + "\n")
    columns = ["class", "precision", "recall", "f1", "support"]
    csv_rows = [columns] + [[row[key] for key in columns] for row in per_class]
    csv_path = write_text_atomic(out_dir / f"{stem}_per_class.csv", _csv_text(csv_rows))
    return {"md": md_path, "per_class_csv": csv_path}


@dataclass
class GalleryItem:
    image: Image.Image  # RGB, any size
    true_label: str
    pred_label: str
    score: float  # probability of the predicted class


def save_prediction_gallery(
    items: list[GalleryItem], path: str | Path, columns: int = 4, title: str | None = None
) -> Path:
    """Grid of predictions; misclassified images get a red title and a red frame."""
    if not items:
        raise ValueError("save_prediction_gallery needs at least one item")
    columns = max(1, min(columns, len(items)))
    rows = math.ceil(len(items) / columns)
    fig = Figure(figsize=(2.6 * columns, 3.0 * rows + (0.4 if title else 0.0)), layout="constrained")
    for index, item in enumerate(items):
        ax = fig.add_subplot(rows, columns, index + 1)
        thumbnail = item.image.convert("RGB")  # a copy, so thumbnail() below leaves the caller's image alone
        thumbnail.thumbnail(_GALLERY_THUMBNAIL)
        ax.imshow(np.asarray(thumbnail))
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = item.pred_label != item.true_label
        pred = _truncate(item.pred_label, _GALLERY_LABEL_CHARS)
        true = _truncate(item.true_label, _GALLERY_LABEL_CHARS)
        ax.set_title(
            f"pred: {pred} ({item.score:.2f})\ntrue: {true}",
            fontsize=9,
            color=_WRONG if wrong else _RIGHT,
            **_LITERAL_TEXT,
        )
        for spine in ax.spines.values():
            spine.set_visible(wrong)
            spine.set_color("red")
            spine.set_linewidth(4)
    if title:
        fig.suptitle(title, **_LITERAL_TEXT)
    return _save_figure(fig, path)


# --- a head bank: bank.png -------------------------------------------------------------------------------
_BANK_LABEL_CHARS = 60
_BANK_SELECTED = "#2ca02c"
_BANK_VAL = "#1f77b4"
_BANK_TEST = "#ff7f0e"
_BANK_STOPPED = "#7f7f7f"


def _bank_label(text: str) -> str:
    return text if len(text) <= _BANK_LABEL_CHARS else text[: _BANK_LABEL_CHARS - 1] + "…"


def bank_chart(report: dict[str, Any]) -> Figure:
    """Every head of a bank, best first: its validation metric (what selects) and its test metric beside it (reported,
    never selected on); the selected head in green, heads that stopped in grey. The legend sits below the axes, where
    it cannot hide a head."""
    monitor = report["monitor"].removeprefix("val/")
    selected = (report.get("selected") or {}).get("index")
    heads = sorted(report["heads"], key=lambda head: head["rank"])
    fig = Figure(figsize=(9, 1.6 + 0.24 * len(heads)), layout="constrained")
    ax = fig.add_subplot()
    for position, head in enumerate(heads):
        val, test = (head.get("val") or {}).get(monitor), (head.get("test") or {}).get(monitor)
        colour = _BANK_SELECTED if head["index"] == selected else _BANK_VAL if head["status"] == "ok" else _BANK_STOPPED
        if val is not None:
            ax.plot(val, position, "o", color=colour, markersize=6)
        if test is not None:
            ax.plot(test, position, "x", color=_BANK_TEST if head["status"] == "ok" else _BANK_STOPPED, markersize=6)
    ax.set_yticks(range(len(heads)), [_bank_label(h["name"]) for h in heads], fontsize=7, parse_math=False)
    ax.invert_yaxis()
    ax.set_xlabel(monitor)
    ax.grid(axis="x", alpha=0.3)
    legend = [Line2D([], [], marker="o", linestyle="", color=_BANK_VAL, label=f"val/{monitor} (selects)"),
              Line2D([], [], marker="o", linestyle="", color=_BANK_SELECTED, label="selected head"),
              Line2D([], [], marker="x", linestyle="", color=_BANK_TEST, label=f"test/{monitor} (reported only)")]
    if any(head["status"] != "ok" for head in heads):
        legend.append(Line2D([], [], marker="o", linestyle="", color=_BANK_STOPPED, label="head that stopped"))
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=7)
    ax.set_title(f"head bank: {len(heads)} heads, selected on val/{monitor}", fontsize=9)
    return fig


def save_bank_chart(report: dict[str, Any], path: Path) -> Path:
    fig = bank_chart(report)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
