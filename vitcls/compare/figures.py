"""compare.png: the designs with their intervals, or learning curves along an x setting (matplotlib, no pyplot).

The design chart draws the validation metric (which ranks) and the test metric (which the tests against the best
use) as separate markers; only the test marker carries the test's colour. Legends sit outside the axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitcls.compare.outputs import metric_column
from vitcls.compare.scoring import MetricKey, Ranking, x_sort_key
from vitcls.compare.stats import CONFIDENCE, SIGNIFICANCE
from vitcls.compare.vs_best import BEST, BETTER, CORRECTION, LABELS, NOT_DISTINGUISHABLE, UNKNOWN, WORSE
from vitcls.io import atomic_write

_TEXT = {"parse_math": False, "usetex": False}  # design names are drawn as typed
_VAL = "#505050"
# The colour of the test marker of a design, by its label against the best (vs_best).
TEST_COLOURS = {BEST: "#2ca02c", NOT_DISTINGUISHABLE: "#ff7f0e", WORSE: "#1f77b4", BETTER: "#9467bd",
                UNKNOWN: "#b0b0b0"}
_LABEL_CHARS = 60
_DPI = 150
_VAL_OFFSET, _TEST_OFFSET = -0.14, 0.16  # the two markers of a design, around its row


def save_figure(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight"))


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _interval(row: dict[str, Any], key: MetricKey) -> tuple[float | None, float | None, float | None]:
    split, metric = key
    return tuple(row[metric_column(split, metric, s)] for s in ("mean", "ci_low", "ci_high"))


def _error_bar(ax, position: float, mean, low, high, colour: str, marker: str, gid: str):
    if mean is not None:
        # A float32 metric can read 1.0000001: its interval, clipped to the metric's range, then ends below it.
        error = None if low is None else [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]
        bar = ax.errorbar([mean], [position], xerr=error, fmt=marker, color=colour, capsize=3)
        bar.lines[0].set_gid(gid)


def test_colour(label: str | None) -> str:
    """The test marker's colour: the design's label against the best, from the Holm-corrected test p-value."""
    return TEST_COLOURS.get(label or UNKNOWN, TEST_COLOURS[UNKNOWN])


def _legend_text(label: str, metric: str) -> str:
    return {
        BEST: f"{metric}: the design ranked first",
        NOT_DISTINGUISHABLE: f"{metric}: not distinguishable from it ({CORRECTION} p >= {SIGNIFICANCE:g})",
        WORSE: f"{metric}: worse than it ({CORRECTION} p < {SIGNIFICANCE:g})",
        BETTER: f"{metric}: better than it ({CORRECTION} p < {SIGNIFICANCE:g})",
        UNKNOWN: f"{metric}: untested (no p-value)",
    }[label]


def design_chart(rows: Sequence[dict[str, Any]], ranking: Ranking, selected_on_test: bool) -> Figure:
    """One line per design (ranked, best on top): the ranking metric's mean and interval (circle), and the test
    metric's just below (square) in the colour of the design's test against the best. The markers' gids are
    `<split>/<metric>:<design>`."""
    fig = Figure(figsize=(8.5, 2.0 + 0.45 * max(1, len(rows))), layout="constrained")
    ax = fig.add_subplot()
    tested = ranking.significance
    separate = tested != ranking.key  # with selection on test, one marker carries both
    labels = []
    for i, row in enumerate(rows):
        test_label = row["vs_best"]
        if separate:
            _error_bar(ax, i + _VAL_OFFSET, *_interval(row, ranking.key), _VAL, "o", f"{ranking.name}:{row['design']}")
        _error_bar(ax, i + (_TEST_OFFSET if separate else 0.0), *_interval(row, tested), test_colour(test_label),
                   "s", f"{'/'.join(tested)}:{row['design']}")
        mark = "" if not test_label else "  (ranked first)" if test_label == BEST else f"  (test: {test_label})"
        labels.append(_label(row["design"]) + f"  n={row['n_seeds']}" + mark)
    ax.set_yticks(range(len(rows)), labels, fontsize=8, **_TEXT)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{ranking.metric}: mean over seeds, {CONFIDENCE:.0%} interval", **_TEXT)
    how = "SELECTED ON TEST" if selected_on_test else f"ranked by {ranking.name}"
    ax.set_title(f"designs {how}; test/{ranking.metric} coloured by its {CORRECTION}-corrected test against the "
                 "design ranked first", fontsize=9, **_TEXT)
    tested_name = "/".join(tested)
    legend = [Line2D([], [], marker="o", color=_VAL, label=f"{ranking.name} (ranks the designs)")] if separate else []
    present = {row["vs_best"] for row in rows}
    legend += [Line2D([], [], marker="s", color=TEST_COLOURS[label], label=_legend_text(label, tested_name))
               for label in LABELS if label in present]
    fig.legend(handles=legend, fontsize=8, loc="outside lower center", ncols=2)
    return fig


def save_design_chart(rows: Sequence[dict[str, Any]], ranking: Ranking, path: Path, selected_on_test: bool) -> Path:
    return save_figure(design_chart(rows, ranking, selected_on_test), path)


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
            ax.minorticks_off()
        # ticks at the swept values, as typed (a log axis would otherwise read 6x10^0)
        ax.set_xticks(numbers if numbers else range(len(x_values)), x_values, **_TEXT)
        ax.set_xlabel(x, **_TEXT)
        ax.set_ylabel(f"{key[0]}/{key[1]}", **_TEXT)
        ax.grid(alpha=0.3)
        ax.set_title(f"{key[0]}/{key[1]}: mean over seeds, {CONFIDENCE:.0%} band", fontsize=9, **_TEXT)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="outside right upper")  # off the data
    return save_figure(fig, path)
