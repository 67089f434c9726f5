"""compare.png: the designs with their intervals, or learning curves along an x setting (matplotlib, no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitcls.compare.outputs import metric_column
from vitcls.compare.scoring import MetricKey, Ranking, x_sort_key
from vitcls.compare.stats import CONFIDENCE, SIGNIFICANCE
from vitcls.io import atomic_write

_TEXT = {"parse_math": False, "usetex": False}  # design names are drawn as typed
_BEST, _TIED, _OTHER, _TEST = "#2ca02c", "#ff7f0e", "#7f7f7f", "#1f77b4"
_LABEL_CHARS = 60
_DPI = 150


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight"))


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _interval(row: dict[str, Any], key: MetricKey) -> tuple[float | None, float | None, float | None]:
    split, metric = key
    return tuple(row[metric_column(split, metric, s)] for s in ("mean", "ci_low", "ci_high"))


def _error_bar(ax, position: float, mean, low, high, colour: str, marker: str):
    if mean is not None:
        # A float32 metric can read 1.0000001: its interval, clipped to the metric's range, then ends below it.
        error = None if low is None else [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]
        ax.errorbar([mean], [position], xerr=error, fmt=marker, color=colour, capsize=3)


def save_design_chart(rows: Sequence[dict[str, Any]], ranking: Ranking, path: Path, selected_on_test: bool) -> Path:
    """One line per design (ranked, best on top): the ranking metric's mean and interval, the best design and
    those tied with it coloured, and the test mean with its interval just below."""
    fig = Figure(figsize=(8.5, 1.4 + 0.45 * max(1, len(rows))), layout="constrained")
    ax = fig.add_subplot()
    labels = []
    for i, row in enumerate(rows):
        best, tied = row["rank"] == 1, row["tied_with_best"]
        colour = _BEST if best else (_TIED if tied else _OTHER)
        _error_bar(ax, i - 0.12, *_interval(row, ranking.key), colour, "o")
        if ranking.significance != ranking.key:
            _error_bar(ax, i + 0.18, *_interval(row, ranking.significance), _TEST, "s")
        mark = "  (best)" if best else ("  (tied with best)" if tied else "")
        labels.append(_label(row["design"]) + f"  n={row['n_seeds']}" + mark)
    ax.set_yticks(range(len(rows)), labels, fontsize=8, **_TEXT)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{ranking.metric}: mean over seeds, {CONFIDENCE:.0%} interval", **_TEXT)
    how = "SELECTED ON TEST" if selected_on_test else f"ranked by {ranking.name}"
    ax.set_title(f"designs {how}; green: best, orange: not significantly different from it "
                 f"(p >= {SIGNIFICANCE:.2g} on test/{ranking.metric})",
                 fontsize=9, **_TEXT)
    legend = [Line2D([], [], marker="o", color=_OTHER, label=f"{ranking.name} (ranks the designs)")]
    if ranking.significance != ranking.key:
        legend.append(Line2D([], [], marker="s", color=_TEST, label=f"test/{ranking.metric}"))
    ax.legend(handles=legend, fontsize=8, loc="best")
    return _save(fig, path)


def _numeric(values: Sequence[str | None]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def save_learning_curves(rows: Sequence[dict[str, Any]], ranking: Ranking, x: str, path: Path) -> Path:
    """The ranking metric and its test counterpart against the x setting: one line per design, interval band."""
    keys = list(dict.fromkeys([ranking.key, ranking.significance]))
    fig = Figure(figsize=(6.0 * len(keys), 4.5), layout="constrained")
    axes = [fig.add_subplot(1, len(keys), i + 1) for i in range(len(keys))]
    designs = list(dict.fromkeys(row["design"] for row in rows))
    x_values = sorted({row[x] for row in rows}, key=x_sort_key)
    numbers = _numeric(x_values)
    position = dict(zip(x_values, numbers if numbers else range(len(x_values)), strict=True))
    for ax, key in zip(axes, keys, strict=True):
        for design in designs:
            points = sorted((row for row in rows if row["design"] == design and _interval(row, key)[0] is not None),
                            key=lambda row: x_sort_key(row[x]))
            if not points:
                continue
            xs = [position[row[x]] for row in points]
            means, lows, highs = zip(*(_interval(row, key) for row in points), strict=True)
            line = ax.plot(xs, means, marker="o", label=_label(design))[0]
            if all(v is not None for v in lows):
                ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
            ax.set_xscale("log")
        if not numbers:
            ax.set_xticks(range(len(x_values)), x_values)
        ax.set_xlabel(x, **_TEXT)
        ax.set_ylabel(f"{key[0]}/{key[1]}", **_TEXT)
        ax.grid(alpha=0.3)
        ax.set_title(f"{key[0]}/{key[1]}: mean over seeds, {CONFIDENCE:.0%} band", fontsize=9, **_TEXT)
    axes[0].legend(fontsize=7, loc="best")
    return _save(fig, path)
