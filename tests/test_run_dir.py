"""What a run does in a directory that holds one: start, resume or skip; refusals; jobs of a resumed sweep."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from vitcls.config.sweeps import sweep_job_subdir
from vitcls.run.plan import (
    RunDirInUse,
    RunPlan,
    check_run_dir,
    plan_run,
    resume_hint,
    set_aside_previous_attempt,
)


@pytest.fixture(autouse=True)
def not_on_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)


def checkpoint(path, mid_validation=False, age_s=0.0):
    """A file with the loop state Lightning writes: mid-validation or not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    val_progress = {"current": {"ready": 3 if mid_validation else 5}, "is_last_batch": not mid_validation}
    torch.save({"state_dict": {}, "loops": {"fit_loop": {"epoch_loop.val_loop.batch_progress": val_progress}}}, path)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def finished(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("seed: 42\n")
    checkpoint(run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "summary.json").write_text(json.dumps({"test": {"acc": 0.5}, "best_ckpt": "x"}))
    return run_dir


def test_resume_skips_a_finished_run_resumes_an_interrupted_one_and_starts_the_rest(tmp_path):
    done = finished(tmp_path / "done")
    assert plan_run(done, resume=True).action == "skip"

    interrupted = tmp_path / "interrupted"
    checkpoint(interrupted / "checkpoints" / "last.ckpt", age_s=60)
    newest = checkpoint(interrupted / "checkpoints" / "interrupted.ckpt")
    assert plan_run(interrupted, resume=True) == RunPlan(
        "resume", str(newest), "resume=true: resumes from interrupted.ckpt"
    )

    started = tmp_path / "started"  # killed before its first checkpoint
    started.mkdir()
    (started / "config.yaml").write_text("seed: 42\n")
    assert plan_run(started, resume=True).action == "start"
    assert plan_run(tmp_path / "never_ran", resume=True).action == "start"


def test_failed_runs_run_again_unless_resume_failed_is_off(tmp_path):
    failed = tmp_path / "failed"
    checkpoint(failed / "checkpoints" / "last.ckpt")
    (failed / "FAILED.json").write_text("{}")
    assert plan_run(failed, resume=True).action == "start"  # from scratch: its checkpoint led to the failure
    assert plan_run(failed, resume=True, resume_failed=False).action == "skip"
    # a finished run with a FAILED.json beside its summary (written by an older vitcls) is finished
    stale = finished(tmp_path / "stale")
    (stale / "FAILED.json").write_text("{}")
    assert plan_run(stale, resume=True).action == "skip"


def test_ckpt_path_last_in_a_multirun_means_resume(tmp_path):
    done = finished(tmp_path / "done")
    assert plan_run(done, "last", in_multirun=True).action == "skip"  # not tested again
    assert plan_run(tmp_path / "never_ran", "last", in_multirun=True).action == "start"  # not failed
    # a single run keeps its meaning: resume from the newest checkpoint, or say there is none
    assert plan_run(done, "last").ckpt_path == str(done / "checkpoints" / "last.ckpt")
    with pytest.raises(Exception, match="ckpt_path=last: no last.ckpt"):
        plan_run(tmp_path / "never_ran", "last")


def test_a_checkpoint_taken_mid_validation_is_passed_over(tmp_path):
    run_dir = tmp_path / "run"
    last = checkpoint(run_dir / "checkpoints" / "last.ckpt", age_s=60)
    checkpoint(run_dir / "hpc_ckpt_1.ckpt", mid_validation=True)  # SLURM's signal came during validation
    assert plan_run(run_dir, resume=True).ckpt_path == str(last)


def test_a_requeued_slurm_job_resumes_by_itself(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 42\n")  # written at the start of every run
    checkpoint(run_dir / "checkpoints" / "last.ckpt", age_s=60)
    hpc = checkpoint(run_dir / "hpc_ckpt_2.ckpt")
    assert plan_run(run_dir) == RunPlan("resume", str(hpc), "requeued SLURM job: resumes from hpc_ckpt_2.ckpt")
    hpc.unlink()
    with pytest.raises(RunDirInUse):  # not requeued: a used directory
        plan_run(run_dir)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert plan_run(run_dir).ckpt_path == str(run_dir / "checkpoints" / "last.ckpt")


def test_the_refusal_names_the_setting_of_a_run_or_of_a_sweep(tmp_path):
    used = finished(tmp_path / "0")
    with pytest.raises(RunDirInUse, match=r"Choose another hydra.run.dir, resume it with ckpt_path=last"):
        check_run_dir(used, resuming=False, overwrite=False)
    with pytest.raises(RunDirInUse, match=r"run it again with resume=true .*another hydra.sweep.dir") as refused:
        check_run_dir(used, resuming=False, overwrite=False, in_multirun=True)
    assert "hydra.run.dir" not in str(refused.value)
    assert resume_hint(used, tmp_path).endswith(f"hydra.sweep.dir={tmp_path} resume=true")
    assert resume_hint(used).endswith(f"hydra.run.dir={used} ckpt_path=last")
    assert resume_hint(tmp_path / "stopped_early").startswith("no checkpoint yet")


def test_starting_again_sets_the_earlier_attempt_aside(tmp_path):
    run_dir = finished(tmp_path / "run")
    (run_dir / "FAILED.json").write_text("{}")
    (run_dir / "train.log").write_text("kept\n")
    moved = set_aside_previous_attempt(run_dir)
    assert moved == run_dir / "previous_attempts" / "1"
    assert sorted(p.name for p in moved.iterdir()) == ["FAILED.json", "checkpoints", "config.yaml", "summary.json"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["previous_attempts", "train.log"]
    assert set_aside_previous_attempt(run_dir) is None  # nothing left to move
    finished(run_dir)
    assert set_aside_previous_attempt(run_dir) == run_dir / "previous_attempts" / "2"


def write_job(sweep, name, overrides):
    hydra_dir = sweep / name / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_a_resumed_sweep_finds_each_job_by_its_overrides_not_its_number(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, "0", ["data.root=/photos", "head=linear"])
    write_job(sweep, "1", ["data.root=/photos", "head=mlp"])
    # the values in another order, resume=true added: job 0 of the new sweep is job 1 of the old one
    assert sweep_job_subdir(sweep, ["head=mlp", "data.root=/photos", "resume=true"], 0, resume=True) == "1"
    assert sweep_job_subdir(sweep, ["data.root=/photos", "head=linear", "ckpt_path=last"], 1, resume=True) == "0"
    # a job that never ran does not take another job's directory
    assert sweep_job_subdir(sweep, ["data.root=/photos", "head=cosine", "resume=true"], 1, resume=True) == "1_1"
    assert sweep_job_subdir(sweep, ["data.root=/photos", "head=cosine", "resume=true"], 2, resume=True) == "2"
    # without resume: the job number, as Hydra numbers it
    assert sweep_job_subdir(sweep, ["head=mlp", "data.root=/photos"], 0, resume=False) == "0"
