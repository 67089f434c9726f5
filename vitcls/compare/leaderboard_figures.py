"""leaderboard.png (designs x datasets, the test metric as colour and number, rows in validation rank order)
and few_shot_<dataset>.png (test metric against shots per class, one line per design). matplotlib, no pyplot.

The heatmap grows with the designs (a fixed height per row) and with the datasets (a fixed width per column), so
labels keep their size and do not overlap at 40 designs; legends sit outside the axes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vitcls.compare.figures import save_figure
from vitcls.compare.vs_best import BEST

_TEXT = {"parse_math": False, "usetex": False}  # names are drawn as typed
_ROW_INCHES = 0.26
_COLUMN_INCHES = 0.95
_CHAR_INCHES = 0.062  # of an 8 pt label
_FONT = 8
_CELL_FONT = 7
_MISSING = "–"
_LEGEND_ROWS = 22  # legend entries per column of the few-shot figure
_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def wins_text(row: dict[str, Any]) -> str:
    """W/N/L against the best ('best' for it), untested datasets after them; blank when not ranked."""
    if row["vs_best"] == BEST:
        return "best"
    if row["wins"] is None:
        return ""
    text = f"{row['wins']}/{row['not_distinguishable']}/{row['losses']}"
    return text + (f" ({row['unknown']} untested)" if row["unknown"] else "")


def dataset_header(board: dict[str, Any], dataset: str) -> str:
    return f"{dataset} (FAILED)" if dataset in board["failed"] else dataset


def _row_label(row: dict[str, Any]) -> str:
    rank = f"{row['rank']}." if row["rank"] is not None else _MISSING
    return f"{rank} {row['name']} ({row['protocol']})" if row["name"] == row["design"] else f"{rank} {row['name']}"


def _side_label(row: dict[str, Any], metric: str) -> str:
    if row["mean_val"] is None:
        return f"not ranked: missing {', '.join(row['missing'])}"
    return f"val/{metric} {row['mean_val']:.3f}   W/N/L {wins_text(row)}"


def leaderboard_chart(board: dict[str, Any]) -> Figure:
    """Rows: designs in validation rank order; columns: datasets, then the mean over the datasets that did not
    fail. Colour and number: test metric (mean over seeds). A failed dataset's column is hatched (gid
    `failed:<dataset>`). Right of the rows: mean val (which ranks) and W/N/L against the design ranked first."""
    rows, datasets, metric = board["rows"], board["datasets"], board["metric"]
    columns = [*datasets, "mean"]
    values = np.full((max(len(rows), 1), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, dataset in enumerate(datasets):
            cell = row["datasets"].get(dataset)
            if cell is not None and dataset not in board["failed"]:
                values[i, j] = cell["test"]
        values[i, -1] = np.nan if row["mean_test"] is None else row["mean_test"]
    labels = [_row_label(row) for row in rows]
    sides = [_side_label(row, metric) for row in rows]
    width = (_CHAR_INCHES * (max(map(len, labels), default=10) + max(map(len, sides), default=10))
             + _COLUMN_INCHES * len(columns) + 1.5)
    fig = Figure(figsize=(max(width, 7.0), 2.4 + _ROW_INCHES * max(len(rows), 1)), layout="constrained")
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    norm = Normalize(*(float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
    cmap = colormaps["viridis"].with_extremes(bad="#f2f2f2")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    for i in range(len(rows)):
        for j, column in enumerate(columns):
            if column in board["failed"]:
                continue
            value = values[i, j]
            missing = not math.isfinite(value)
            colour = "black" if missing or norm(value) > 0.55 else "white"
            ax.text(j, i, _MISSING if missing else f"{value:.3f}", ha="center", va="center", color=colour,
                    fontsize=_CELL_FONT, fontweight="bold" if column == "mean" else "normal", in_layout=False)
    for j, dataset in enumerate(datasets):
        if dataset in board["failed"]:
            patch = Rectangle((j - 0.5, -0.5), 1.0, max(len(rows), 1), facecolor="#d9d9d9", edgecolor="#7f7f7f",
                              hatch="//", gid=f"failed:{dataset}")
            ax.add_patch(patch)
            ax.text(j, (len(rows) - 1) / 2, "FAILED", rotation=90, ha="center", va="center", fontsize=_FONT,
                    color="#404040", bbox={"facecolor": "white", "edgecolor": "none", "pad": 2}, in_layout=False)
    ax.axvline(len(datasets) - 0.5, color="black", linewidth=2.5)
    included = len(board["datasets_in_means"])
    headers = [dataset_header(board, d) for d in datasets] + [f"mean over {included}"]
    ax.set_xticks(range(len(columns)), headers, fontsize=_FONT, rotation=30, ha="left", rotation_mode="anchor",
                  **_TEXT)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), labels, fontsize=_FONT, **_TEXT)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.tick_params(length=0)
    side = ax.twinx()
    side.set_ylim(ax.get_ylim())
    side.set_yticks(range(len(rows)), sides, fontsize=_FONT, **_TEXT)
    side.tick_params(length=0)
    fig.colorbar(image, ax=[ax, side], location="bottom", shrink=0.5, aspect=40, pad=0.01,
                 label=f"test/{metric}, mean over seeds")
    ax.set_title(
        f"COLOUR AND NUMBER: test/{metric} (never ranks). ROW ORDER: mean val/{metric} over the {included} "
        f"datasets{' that did not fail' if board['failed'] else ''}.\nW/N/L: datasets where the design is "
        f"better / not distinguishable / worse than the first on test (Holm, alpha {board['alpha']:g})",
        fontsize=_FONT + 1, loc="left", **_TEXT)
    return fig


def save_leaderboard_chart(board: dict[str, Any], path: Path) -> Path:
    return save_figure(leaderboard_chart(board), path)


def few_shot_chart(board: dict[str, Any], dataset: str) -> Figure:
    """Test metric against shots per class (log axis, ticks at the shot values): one line per design (gid
    `few_shot:<design>`), band = the t interval over draws x seeds; the legend outside the axes."""
    curves = board["few_shot"][dataset]
    shots = sorted({int(s) for curve in curves.values() for s in curve})
    columns = max(1, math.ceil(len(curves) / _LEGEND_ROWS))
    longest = max(map(len, curves), default=10)
    height = max(4.5, 0.19 * min(len(curves), _LEGEND_ROWS) + 1.2)
    fig = Figure(figsize=(6.5 + columns * (0.6 + _CHAR_INCHES * longest), height), layout="constrained")
    ax = fig.add_subplot()
    colours = colormaps["tab20" if len(curves) > 10 else "tab10"].colors
    for i, (name, curve) in enumerate(curves.items()):
        points = sorted((int(s), found) for s, found in curve.items())
        xs = [s for s, _ in points]
        colour = colours[i % len(colours)]
        style = _LINE_STYLES[(i // len(colours)) % len(_LINE_STYLES)]
        ax.plot(xs, [found["mean"] for _, found in points], color=colour, linestyle=style,
                marker=_MARKERS[(i // len(colours)) % len(_MARKERS)], markersize=4, label=name,
                gid=f"few_shot:{name}")
        with_ci = [(s, found["ci"]) for s, found in points if found["ci"] is not None]
        if with_ci:
            ax.fill_between([s for s, _ in with_ci], [ci[0] for _, ci in with_ci], [ci[1] for _, ci in with_ci],
                            color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(shots, [str(s) for s in shots], **_TEXT)  # the values run, not 10^0
    if len(shots) == 1:
        ax.set_xlim(shots[0] / 2, shots[0] * 2)
    ax.set_xlabel("training images per class (shots), log scale")
    ax.set_ylabel(f"test/{board['metric']}")
    ax.grid(alpha=0.3)
    ax.set_title(f"{dataset}: few-shot test/{board['metric']}, mean over draws x seeds, "
                 f"band = {board['confidence']:.0%} t interval", fontsize=_FONT + 1, **_TEXT)
    fig.legend(fontsize=7, loc="outside right upper", ncols=columns)
    return fig


def save_few_shot_chart(board: dict[str, Any], dataset: str, path: Path) -> Path:
    return save_figure(few_shot_chart(board, dataset), path)
