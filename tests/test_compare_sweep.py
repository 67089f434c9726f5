"""A real multirun of 2 heads x 2 seeds, end to end: the runs' val/test records, their W&B runs, vitcls-compare."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import FAST_OVERRIDES
from sklearn import metrics as skm
from test_sweeps import run_script, wandb_offline  # noqa: F401  (fixture)
from wandb_records import offline_runs

SWEEP_OVERRIDES = [*FAST_OVERRIDES, "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "logger=wandb"]


def predictions(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_heads_by_two_seeds_from_training_to_the_design_table(image_folder_factory, tmp_path, wandb_offline):  # noqa: F811
    root = image_folder_factory({"a": 6, "b": 6, "c": 6})
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", f"data.root={root}", "head=linear,mlp", "seed=1,2", *SWEEP_OVERRIDES,
               f"hydra.sweep.dir={sweep}")
    jobs = {str(n): sweep / str(n) for n in range(4)}
    summaries = {name: json.loads((job / "summary.json").read_text()) for name, job in jobs.items()}

    # every run records the val and test metrics of its tested checkpoint, and the per-image predictions
    val_paths = set()
    for name, job in jobs.items():
        summary = summaries[name]
        assert summary["val"][summary["monitor"].removeprefix("val/")] == pytest.approx(summary["best_val_score"])
        for split in ("val", "test"):
            rows = predictions(job / f"{split}_predictions.csv")
            assert len(rows) == summary["num_samples"][split]
            true, pred = [r["true_label"] for r in rows], [r["pred_label"] for r in rows]
            assert summary[split]["acc"] == pytest.approx(skm.accuracy_score(true, pred), abs=1e-6)
            assert summary[split]["f1_macro"] == pytest.approx(
                skm.f1_score(true, pred, average="macro", zero_division=0), abs=1e-6)
            assert set(summary[split]) == set(summary["test"])
        val_paths.add(tuple(r["path"] for r in predictions(job / "val_predictions.csv")))
    assert len(val_paths) == 1  # seeds do not move the validation split

    # W&B: one key per setting, the seed and the design in the config, a group named after the sweep
    runs = {run.directory.parents[1].name: run for run in offline_runs(sweep)}
    for name, run in runs.items():
        config = run.config
        head, seed = ("linear", "mlp")[int(name) // 2], (1, 2)[int(name) % 2]
        assert config["design"] == f"head={head}" and config["seed"] == seed
        assert run.run["run_group"] == "train_sweep"
        assert config["optim.lr"] == pytest.approx(2e-4) and config["data.root"] == str(root)
        assert not {"optimizer.lr", "root", "net.backbone.name", "scheduler.decay", "head._partial_"} & set(config)
        assert config["params/trainable"] == summaries[name]["params"]["trainable"]

    # the design table: one row per head over its two seeds, ranked on val; a summary run in the same group
    result = run_script("-m", "vitcls.cli.compare", str(sweep), "--wandb")
    with open(sweep / "compare.csv") as handle:
        rows = {row["design"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"head=linear", "head=mlp"} and {r["n_seeds"] for r in rows.values()} == {"2"}
    for design, jobs_of in (("head=linear", ("0", "1")), ("head=mlp", ("2", "3"))):
        val_mean = sum(summaries[j]["val"]["f1_macro"] for j in jobs_of) / 2
        assert float(rows[design]["val_f1_macro_mean"]) == pytest.approx(val_mean)
    ranked = sorted(rows.values(), key=lambda r: -float(r["val_f1_macro_mean"]))
    assert ranked[0]["rank"] == "1" and ranked[1]["rank"] == "2"
    assert "ranked by val/f1_macro" in result.stdout
    (compare_run,) = [run for run in offline_runs(sweep) if run.run.get("job_type") == "compare"]
    assert compare_run.run["run_group"] == "train_sweep"
    table = compare_run.table("compare/designs")
    assert [row[1] for row in table["data"]] == [r["design"] for r in ranked]
