"""DDP on CPU (2 gloo processes started by Lightning): exact metrics, rank-zero outputs, multirun directories."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_OVERRIDES, make_image_folder, run_cli

from vitcls.metrics import METRICS

DDP_OVERRIDES = [o for o in FAST_OVERRIDES if not o.startswith("trainer=")] + [
    "trainer=ddp_cpu",
    "data.batch_size=2",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
]


def confusion_total(path) -> int:
    with open(path) as handle:
        return int(np.asarray([list(map(int, row[1:])) for row in list(csv.reader(handle))[1:]]).sum())


@pytest.fixture
def odd_folder(image_folder_factory):
    # 9 val and 9 test images: a padding DistributedSampler on 2 ranks would count one image twice in each.
    return image_folder_factory({"a": 4, "b": 2, "c": 3}, splits=("train", "val", "test"), seed=3)


@pytest.mark.slow
def test_ddp_metrics_count_each_image_once_and_equal_a_single_process_eval(odd_folder, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        "train.py",
        f"data.root={odd_folder}",
        f"hydra.run.dir={run_dir}",
        *DDP_OVERRIDES,
        env={"VITCLS_LOG_DIR": str(tmp_path / "stray")},
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 4
    test_size = summary["num_samples"]["test"]
    assert test_size % 2 == 1 and summary["num_samples"]["val"] % 2 == 1
    assert confusion_total(run_dir / "test_confusion_matrix.csv") == test_size
    # rank 1 logged into the same run directory and wrote no reports of its own
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "stray").exists()
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r.get("test/acc")]) == 1
    # the per-image predictions hold every val and test image once, in the split's order
    for split in ("val", "test"):
        with open(run_dir / f"{split}_predictions.csv") as handle:
            predictions = list(csv.DictReader(handle))
        paths = sorted(str(p) for p in (odd_folder / split).rglob("*.png"))
        assert [row["path"] for row in predictions] == paths
        accuracy = sum(int(row["correct"]) for row in predictions) / len(predictions)
        assert accuracy == pytest.approx(summary[split]["acc"], abs=1e-6)

    eval_dir = tmp_path / "eval"
    run_cli(
        "eval.py",
        f"ckpt_path={summary['best_ckpt']}",
        f"hydra.run.dir={eval_dir}",
        "trainer=cpu",
        "data.num_workers=0",
        "gallery.num_images=4",
    )
    report = json.loads((eval_dir / "eval.json").read_text())
    for name in (*METRICS, "loss"):  # the loss too: the mean over all images, summed across ranks
        assert summary["test"][name] == pytest.approx(report["test"][name], abs=1e-6), name
    assert confusion_total(eval_dir / "test_confusion_matrix.csv") == test_size


@pytest.mark.slow
def test_a_rank_without_a_validation_or_test_image_takes_part_and_the_metrics_stay_exact(tmp_path):
    """3 ranks, 2 val and 2 test images: rank 2 has no evaluation batch. Every rank must still enter the same
    collectives (metric sync, confusion matrix, gathered predictions), or the run hangs or crashes."""
    root = tmp_path / "images"
    make_image_folder(root, {"a": 6, "b": 6}, "train", seed=11)
    make_image_folder(root, {"a": 1, "b": 1}, "val", seed=12)
    make_image_folder(root, {"a": 1, "b": 1}, "test", seed=13)
    run_dir = tmp_path / "run"
    run_cli(
        "train.py",
        f"data.root={root}",
        f"hydra.run.dir={run_dir}",
        *DDP_OVERRIDES,
        "trainer.devices=3",
        "trainer.num_sanity_val_steps=2",
        "trainer.max_epochs=2",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 3 and summary["num_samples"]["test"] == 2 and summary["best_ckpt"]
    assert confusion_total(run_dir / "test_confusion_matrix.csv") == 2
    with open(run_dir / "metrics.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle) if r.get("val/loss")] == ["0", "1"]

    eval_dir = tmp_path / "eval"
    run_cli("eval.py", f"ckpt_path={summary['best_ckpt']}", f"hydra.run.dir={eval_dir}", "trainer=cpu",
            "data.num_workers=0", "gallery.num_images=2")
    report = json.loads((eval_dir / "eval.json").read_text())
    for name in (*METRICS, "loss"):
        assert summary["test"][name] == pytest.approx(report["test"][name], abs=1e-6), name


@pytest.mark.slow
def test_multirun_with_ddp_keeps_each_jobs_processes_in_its_directory(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    sweep_dir = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        f"data.root={root}",
        "head=linear,mlp",
        *DDP_OVERRIDES,
        "trainer.limit_val_batches=1",
        f"hydra.sweep.dir={sweep_dir}",
        env={"VITCLS_LOG_DIR": str(tmp_path / "stray")},
    )
    # two jobs, not 2 x 2: a child that re-ran the sweep would add jobs or directories
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "stray").exists()
    heads = []
    for job in ("0", "1"):
        job_dir = sweep_dir / job
        summary = json.loads((job_dir / "summary.json").read_text())
        assert summary["paths"]["run_dir"] == str(job_dir) and summary["world_size"] == 2
        assert (job_dir / "train_ddp_process_1.log").is_file()
        assert sorted(p.name for p in job_dir.iterdir() if p.is_dir()) == [".hydra", "checkpoints"]
        [entry] = torch.load(summary["best_ckpt"], weights_only=True)["hyper_parameters"]["net"]["heads"]
        heads.append(entry["head"]["name"])
    assert sorted(heads) == ["linear", "mlp"]


@pytest.mark.slow
def test_a_ddp_job_failing_on_rank_zero_is_recorded_and_the_sweep_goes_on(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    sweep_dir = tmp_path / "sweep"
    tests_dir = str(Path(__file__).resolve().parent)  # fault_injection, for the job and its DDP child
    run_cli(
        "train.py",
        "-m",
        f"data.root={root}",
        *DDP_OVERRIDES,
        "trainer.limit_val_batches=1",
        "+callbacks.fault._target_=fault_injection.FailOnRankZero",
        "+callbacks.fault.enabled=true,false",
        f"hydra.sweep.dir={sweep_dir}",
        env={"PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))},
    )
    # Job 0's rank 1 was left in the gradient all-reduce: unless it is killed, the sweep never gets to job 1.
    failure = json.loads((sweep_dir / "0" / "FAILED.json").read_text())
    assert failure["error_type"] == "RuntimeError" and "injected failure on rank 0" in failure["message"]
    assert not (sweep_dir / "0" / "summary.json").exists()
    summary = json.loads((sweep_dir / "1" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] >= 1
