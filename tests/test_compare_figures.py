"""compare.png and bank.png: the test's label on the test marker only, legends that agree with the markers and
sit off the data."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex
from PIL import Image

from vitcls.compare.figures import TEST_COLOURS, design_chart, save_design_chart
from vitcls.compare.outputs import metric_column
from vitcls.compare.scoring import Ranking
from vitcls.reporting.plots import bank_chart, save_bank_chart

RANKING = Ranking("val", "f1_macro", minimize=False)
# (design, vs_best, val mean, test mean): head=linear's validation interval lies far below the best's, yet the
# test cannot tell it from the best: that colour belongs on its test marker, not on its validation one.
CANDIDATES = [("head=mlp", "best", 0.49, 0.80), ("head=linear", "not distinguishable", 0.32, 0.79),
           ("head=cosine", "worse", 0.30, 0.60), ("head=attention", "better", 0.28, 0.95),
           ("head=norm_linear", "unknown", 0.25, 0.78)]


def rows(designs=CANDIDATES):
    found = []
    for rank, (name, vs_best, val, test) in enumerate(designs, start=1):
        row = {"rank": rank, "design": name, "n_seeds": 2, "vs_best": vs_best}
        for (split, metric), mean in zip(RANKING.reported(), (val, test, test), strict=True):
            values = {"mean": mean, "std": 0.01, "ci_low": mean - 0.05, "ci_high": mean + 0.05}
            row.update({metric_column(split, metric, s): v for s, v in values.items()})
        found.append(row)
    return found


def markers(fig):
    """{gid: colour} of the data markers drawn."""
    return {line.get_gid(): to_hex(line.get_color()) for ax in fig.axes for line in ax.lines if line.get_gid()}


def legend_entries(fig):
    (legend,) = fig.legends
    return {text.get_text(): (handle.get_marker(), to_hex(handle.get_color()))
            for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}


def assert_off_the_axes(fig):
    fig.draw_without_rendering()
    (legend,) = fig.legends
    for ax in fig.axes:
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_the_test_marker_carries_the_label_and_the_validation_marker_never_does():
    fig = design_chart(rows(), RANKING, selected_on_test=False)
    drawn = markers(fig)
    val_colours = {drawn[f"val/f1_macro:{name}"] for name, *_ in CANDIDATES}
    assert len(val_colours) == 1  # one colour for every validation marker, whatever its test says
    for name, vs_best, *_ in CANDIDATES:
        assert drawn[f"test/f1_macro:{name}"] == TEST_COLOURS[vs_best]
    assert len({TEST_COLOURS[vs_best] for _, vs_best, *_ in CANDIDATES}) == len(CANDIDATES)
    # the legend shows each marker as drawn: the validation one in its colour, one test entry per label
    entries = legend_entries(fig)
    assert entries["val/f1_macro (ranks the designs)"] == ("o", val_colours.pop())
    test_entries = {text: colour for text, (marker, colour) in entries.items() if text.startswith("test/")}
    assert sorted(test_entries.values()) == sorted(TEST_COLOURS[vs_best] for _, vs_best, *_ in CANDIDATES)
    assert entries["test/f1_macro: not distinguishable from it (Holm p >= 0.05)"] == (
        "s", TEST_COLOURS["not distinguishable"])
    assert entries["test/f1_macro: better than it (Holm p < 0.05)"] == ("s", TEST_COLOURS["better"])
    ticks = [tick.get_text() for tick in fig.axes[0].get_yticklabels()]
    assert ticks[0].endswith("(ranked first)") and ticks[1].endswith("(test: not distinguishable)")
    assert_off_the_axes(fig)


def test_only_the_labels_present_are_in_the_legend_and_selection_on_test_draws_one_marker():
    ranking = Ranking("test", "f1_macro", minimize=False)
    designs = [("head=mlp", "best", 0.8, 0.8), ("head=linear", "worse", 0.6, 0.6)]
    table = []
    for row in rows(designs):
        table.append({**row, **{metric_column("test", "f1_macro", s): row[metric_column("val", "f1_macro", s)]
                                for s in ("mean", "std", "ci_low", "ci_high")}})
    fig = design_chart(table, ranking, selected_on_test=True)
    assert markers(fig) == {"test/f1_macro:head=mlp": TEST_COLOURS["best"],
                            "test/f1_macro:head=linear": TEST_COLOURS["worse"]}
    assert [marker for marker, _ in legend_entries(fig).values()] == ["s", "s"]
    assert "SELECTED ON TEST" in fig.axes[0].get_title()


def test_the_design_chart_renders(tmp_path):
    path = save_design_chart(rows(), RANKING, tmp_path / "compare.png", selected_on_test=False)
    with Image.open(path) as image:
        assert image.width > 600 and image.height > 300


def bank_report(count=12):
    heads = [{"rank": i + 1, "index": i, "name": f"head=h{i}", "status": "ok" if i < count - 1 else "nonfinite",
              "val": {"f1_macro": 1.0 - 0.02 * i}, "test": {"f1_macro": 0.97 - 0.02 * i}} for i in range(count)]
    return {"monitor": "val/f1_macro", "selected": {"index": 0}, "heads": heads}


@pytest.mark.parametrize("count", [3, 36])
def test_the_bank_legend_hides_no_head(tmp_path, count):
    fig = bank_chart(bank_report(count))
    assert_off_the_axes(fig)
    texts = [text.get_text() for text in fig.legends[0].get_texts()]
    assert texts == ["val/f1_macro (selects)", "selected head", "test/f1_macro (reported only)", "head that stopped"]
    # the last-ranked head, the one the legend used to cover, is drawn inside the axes
    ax = fig.axes[0]
    last = [line for line in ax.lines if len(line.get_ydata()) and line.get_ydata()[0] == count - 1]
    assert last and all(ax.get_window_extent().contains(*ax.transData.transform((line.get_xdata()[0], count - 1)))
                        for line in last)
    with Image.open(save_bank_chart(bank_report(count), tmp_path / "bank.png")) as image:
        assert image.height > 200
