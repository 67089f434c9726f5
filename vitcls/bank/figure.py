"""bank.png: every head of a bank, best first: its validation metric (what selects) and its test metric beside it
(reported, never selected on); the selected head in green, heads that stopped in grey. The legend sits below the
axes, where it cannot hide a head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitcls.io import atomic_write

_LABEL_CHARS = 60
_SELECTED = "#2ca02c"
_VAL = "#1f77b4"
_TEST = "#ff7f0e"
_STOPPED = "#7f7f7f"


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def bank_chart(report: dict[str, Any]) -> Figure:
    """The figure of `save_bank_chart`; its legend sits below the axes, off the heads."""
    monitor = report["monitor"].removeprefix("val/")
    selected = (report.get("selected") or {}).get("index")
    heads = sorted(report["heads"], key=lambda head: head["rank"])
    fig = Figure(figsize=(9, 1.6 + 0.24 * len(heads)), layout="constrained")
    ax = fig.add_subplot()
    for position, head in enumerate(heads):
        val, test = (head.get("val") or {}).get(monitor), (head.get("test") or {}).get(monitor)
        colour = _SELECTED if head["index"] == selected else _VAL if head["status"] == "ok" else _STOPPED
        if val is not None:
            ax.plot(val, position, "o", color=colour, markersize=6)
        if test is not None:
            ax.plot(test, position, "x", color=_TEST if head["status"] == "ok" else _STOPPED, markersize=6)
    ax.set_yticks(range(len(heads)), [_label(h["name"]) for h in heads], fontsize=7, parse_math=False)
    ax.invert_yaxis()
    ax.set_xlabel(monitor)
    ax.grid(axis="x", alpha=0.3)
    legend = [Line2D([], [], marker="o", linestyle="", color=_VAL, label=f"val/{monitor} (selects)"),
              Line2D([], [], marker="o", linestyle="", color=_SELECTED, label="selected head"),
              Line2D([], [], marker="x", linestyle="", color=_TEST, label=f"test/{monitor} (reported only)")]
    if any(head["status"] != "ok" for head in heads):
        legend.append(Line2D([], [], marker="o", linestyle="", color=_STOPPED, label="head that stopped"))
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=7)
    ax.set_title(f"head bank: {len(heads)} heads, selected on val/{monitor}", fontsize=9)
    return fig


def save_bank_chart(report: dict[str, Any], path: Path) -> Path:
    fig = bank_chart(report)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
