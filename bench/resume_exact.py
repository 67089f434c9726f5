"""Is a killed and resumed run the same run? One uninterrupted `python train.py` against the same command
stopped by a signal at a random training batch and resumed with `ckpt_path=last` in the same run directory,
with the default data settings (DataLoader worker processes, persistent). Writes bench/results/resume.json.

    python -m bench.resume_exact [--quick | --tiny] [--signal SIGKILL | SIGTERM] [--kill-seed N]
    python -m bench.resume_exact --per-class 0      # every image of the data root (slow on a CPU)

The training process sends the signal to itself (tests/fault_injection.py's `SignalAt`, added through the
config: `+callbacks.stop._target_=fault_injection.SignalAt`) at the end of a training batch drawn by
`--kill-seed` inside an epoch after the first: never at an epoch boundary, always after a checkpoint exists.
SIGKILL (an OOM killer, a lost node) leaves last.ckpt from the end of the previous epoch, so the resumed run
redoes that epoch's first batches; SIGTERM (a preempting scheduler) saves interrupted.ckpt where it stopped.

What resume.json records, each a check that can fail:
  went_on_from_checkpoint  the killed process died of the signal at the drawn step, before writing
                           summary.json; the resumed run's summary.json `resumed_from` names a checkpoint of
                           this run directory whose global step (read from it before the resume) is past 0
                           and the latest before the kill; the first step and epoch the resumed process logged
                           to metrics.csv are that checkpoint's; and the run directory holds one validation
                           row per epoch (a fresh start would log from step 0 and add a second epoch 0)
  identical                every per-epoch value, every per-step training loss the resumed process logged and
                           every test metric equal the uninterrupted run's, as floats
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, add_size_arguments, pick_size, subset_folder, write_results  # noqa: E402

FAULT_INJECTION_DIR = REPO_ROOT / "tests"  # fault_injection.SignalAt: the signal comes from inside the trainer
CHECKPOINTS = ("last.ckpt", "interrupted.ckpt")  # what ckpt_path=last may resume from
# How the killed process ends: SIGKILL kills it; on SIGTERM vitcls saves interrupted.ckpt, exits with 128 + 15.
EXIT_STATUS = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 128 + signal.SIGTERM}


@dataclass
class ResumeSize:
    name: str
    img_size: int
    batch_size: int
    train_per_class: int | None  # images per class taken from train/ (None: all)
    test_per_class: int | None
    epochs: int


FULL = ResumeSize("full", 64, 16, 60, 20, epochs=3)
QUICK = ResumeSize("quick", 64, 16, 30, 10, epochs=3)
TINY = ResumeSize("tiny", 32, 8, 8, 2, epochs=2)


def train_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def signal_overrides(signal_name: str, step: int, marker: Path) -> list[str]:
    return ["+callbacks.stop._target_=fault_injection.SignalAt", f"+callbacks.stop.signal_name={signal_name}",
            f"+callbacks.stop.step={step}", f"+callbacks.stop.marker={marker}"]


def run(command: list[str], log: Path) -> int:
    """Run `command` in a session of its own with fault_injection importable; its output goes to `log`. Whatever
    is left of the session afterwards (DataLoader workers of a killed trainer) is killed with it."""
    path = os.pathsep.join(p for p in (str(FAULT_INJECTION_DIR), os.environ.get("PYTHONPATH")) if p)
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "PYTHONPATH": path})
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


def run_to_end(command: list[str], log: Path) -> None:
    status = run(command, log)
    if status != 0:
        raise SystemExit(f"{' '.join(command[2:4])}... failed (exit {status}); see {log}:\n{log.read_text()[-3000:]}")


def draw_kill_step(seed: int, epochs: int, steps_per_epoch: int) -> dict[str, int]:
    """A training batch inside an epoch after the first (so last.ckpt exists), never the last of its epoch."""
    if epochs < 2 or steps_per_epoch < 2:
        raise SystemExit(f"a kill inside an epoch after the first needs 2+ epochs of 2+ steps: {epochs} epochs of "
                         f"{steps_per_epoch} steps (raise --per-class or --epochs)")
    rng = random.Random(seed)
    epoch, batches_done = rng.randrange(1, epochs), rng.randrange(1, steps_per_epoch)
    return {"seed": seed, "epoch": epoch, "batches_done_in_epoch": batches_done,
            "global_step": epoch * steps_per_epoch + batches_done}


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def epoch_values(rows: list[dict[str, str]]) -> dict[int, dict[str, float]]:
    """The last value of each metric per epoch (a resumed run appends rows after the old ones)."""
    values: dict[int, dict[str, float]] = {}
    for row in rows:
        if row.get("epoch"):
            values.setdefault(int(float(row["epoch"])), {}).update(
                {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return values


def step_losses(rows: list[dict[str, str]]) -> dict[int, float]:
    return {int(row["step"]): float(row["train/loss_step"]) for row in rows if row.get("train/loss_step")}


def checkpoint_positions(run_dir: Path) -> dict[str, dict[str, int]]:
    """Global step and epoch of each checkpoint `ckpt_path=last` may resume from, read before the resume (it
    overwrites last.ckpt and removes interrupted.ckpt)."""
    positions = {}
    for name in CHECKPOINTS:
        path = run_dir / "checkpoints" / name
        if path.is_file():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            positions[name] = {"global_step": int(checkpoint["global_step"]), "epoch": int(checkpoint["epoch"])}
    return positions


def went_on_from_checkpoint(run_dir: Path, rows_before: int, positions: dict[str, dict[str, int]],
                            steps_per_epoch: int, epochs: int, expected_step: int) -> dict:
    """Did the resumed process continue from a checkpoint of `run_dir`, rather than start over? And from the
    latest one: at `expected_step`."""
    summary = json.loads((run_dir / "summary.json").read_text())
    resumed_from = summary.get("resumed_from")
    name = Path(resumed_from).name if resumed_from else None
    position = positions.get(name) if resumed_from and Path(resumed_from).parent == run_dir / "checkpoints" else None
    rows = read_rows(run_dir)
    appended = [row for row in rows[rows_before:] if row.get("step")]
    first_step = min((int(row["step"]) for row in appended), default=None)
    first_epoch = min((int(float(row["epoch"])) for row in appended if row.get("epoch")), default=None)
    validated = sorted(int(float(row["epoch"])) for row in rows if row.get("val/acc"))
    start = position["global_step"] if position else None
    checks = {
        "resumed_from_names_a_checkpoint_of_the_run": position is not None,
        "checkpoint_past_step_0": bool(start),
        "checkpoint_is_the_latest_before_the_kill": start == expected_step,
        "first_logged_step_is_the_checkpoints": first_step is not None and first_step == start,
        "first_logged_epoch_is_the_checkpoints": start is not None and first_epoch == start // steps_per_epoch,
        "one_validation_per_epoch": validated == list(range(epochs)),
    }
    return {**checks, "resumed_from": resumed_from, "checkpoint_global_step": start,
            "first_logged_step": first_step, "first_logged_epoch": first_epoch, "ok": all(checks.values())}


def compare(reference: Path, resumed: Path, rows_before: int) -> dict:
    """Per-epoch values, the resumed process's per-step training losses and the test metrics, against the
    uninterrupted run's."""
    ref_rows, res_rows = read_rows(reference), read_rows(resumed)
    ref_steps, res_steps = step_losses(ref_rows), step_losses(res_rows[rows_before:])
    # The resumed process logged every step from its first on, each with the uninterrupted run's loss.
    steps_equal = bool(res_steps) and res_steps == {s: v for s, v in ref_steps.items() if s >= min(res_steps)}
    ref_test, res_test = (json.loads((d / "summary.json").read_text())["test"] for d in (reference, resumed))
    ref_epochs, res_epochs = epoch_values(ref_rows), epoch_values(res_rows)
    return {
        "reference": {"epochs": ref_epochs, "test": ref_test},
        "resumed": {"epochs": res_epochs, "test": res_test},
        "resumed_steps_compared": len(res_steps),
        "epoch_values_equal": ref_epochs == res_epochs,
        "step_losses_equal": steps_equal,
        "test_equal": ref_test == res_test,
        "identical": ref_epochs == res_epochs and steps_equal and ref_test == res_test,
    }


def print_report(result: dict) -> None:
    ref, res = result["reference"]["epochs"], result["resumed"]["epochs"]
    print("| epoch | reference train loss | resumed train loss | reference val acc | resumed val acc |")
    print("|---|---|---|---|---|")
    for epoch in sorted(e for e, values in ref.items() if "train/loss_epoch" in values):  # not the test row
        a, b = ref[epoch], res.get(epoch, {})
        print(f"| {epoch} | {a.get('train/loss_epoch', float('nan')):.6f} | {b.get('train/loss_epoch', float('nan')):.6f}"
              f" | {a.get('val/acc', float('nan')):.6f} | {b.get('val/acc', float('nan')):.6f} |")
    for key in sorted(result["reference"]["test"]):
        print(f"test {key}: reference {result['reference']['test'][key]} resumed {result['resumed']['test'].get(key)}")
    kill, resume = result["kill"], result["went_on_from_checkpoint"]
    print(f"{kill['signal']} at global step {kill['global_step']} (epoch {kill['epoch']}, after "
          f"{kill['batches_done_in_epoch']} of its {result['steps_per_epoch']} batches; seed {kill['seed']}): "
          f"{kill['marker']}; resumed from {resume['resumed_from']} at step {resume['checkpoint_global_step']}, "
          f"first logged step {resume['first_logged_step']}")
    print(f"went on from the checkpoint: {resume['ok']}; identical: {result['identical']} "
          f"({result['resumed_steps_compared']} resumed steps compared)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--per-class", type=int, help="train images per class (a third of it for test); 0: all")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--signal", choices=tuple(EXIT_STATUS), default="SIGKILL")
    parser.add_argument("--kill-seed", type=int, default=0, help="draws the training batch the signal comes at")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    if args.per_class is not None:
        per_class = args.per_class or None  # 0: every image
        size = dataclasses.replace(size, train_per_class=per_class,
                                   test_per_class=per_class and max(1, per_class // 3))
    if args.epochs:
        size = dataclasses.replace(size, epochs=args.epochs)
    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        reference, resumed = work / "reference", work / "resumed"
        for d in (reference, resumed):
            if d.exists():
                raise SystemExit(f"{d} exists: pass another --work")
        root = subset_folder(args.data_root, work / "data", size.train_per_class, size.test_per_class)
        overrides = [f"data.root={root}", "model.pretrained=false", f"model.img_size={size.img_size}", "trainer=cpu",
                     f"data.batch_size={size.batch_size}", f"trainer.max_epochs={size.epochs}",
                     "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "seed=42"]
        run_to_end(train_command(reference, overrides), work / "reference.log")
        reference_summary = json.loads((reference / "summary.json").read_text())
        steps_per_epoch = reference_summary["global_steps"] // reference_summary["epochs_trained"]
        kill = {"signal": args.signal, **draw_kill_step(args.kill_seed, size.epochs, steps_per_epoch)}

        marker = work / "signal_sent"
        stop = signal_overrides(args.signal, kill["global_step"], marker)
        status = run(train_command(resumed, [*overrides, *stop]), work / "killed.log")
        kill.update(exit_status=status, marker=marker.read_text().strip() if marker.is_file() else None,
                    died_of_the_signal=status == EXIT_STATUS[args.signal] and marker.is_file(),
                    summary_before_resume=(resumed / "summary.json").exists())
        if not kill["died_of_the_signal"] or kill["summary_before_resume"]:
            raise SystemExit(f"the run was not stopped at step {kill['global_step']} as planned: {kill}; see "
                             f"{work / 'killed.log'}")
        positions = checkpoint_positions(resumed)
        rows_before = len(read_rows(resumed))
        run_to_end(train_command(resumed, [*overrides, *stop, "ckpt_path=last"]), work / "resumed.log")

        # SIGKILL: the last.ckpt of the epoch before; SIGTERM: interrupted.ckpt where the batch ended.
        expected_step = kill["global_step"] if args.signal == "SIGTERM" else kill["epoch"] * steps_per_epoch
        went_on = went_on_from_checkpoint(resumed, rows_before, positions, steps_per_epoch, size.epochs, expected_step)
        result = {"settings": overrides, "steps_per_epoch": steps_per_epoch, "kill": kill,
                  "checkpoints_before_resume": positions, "went_on_from_checkpoint": went_on,
                  **compare(reference, resumed, rows_before)}
    path = write_results("resume", args.out, size, result)
    print_report(result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
