"""Is a killed and resumed run the same run? One uninterrupted training against the same command SIGKILLed
after its first checkpoint and resumed with `ckpt_path=last`, with the default data settings (worker
processes, persistent). Prints the per-epoch table and writes bench/results/resume.json.

    python -m bench.resume_exact                 # fruits360-10, 60 train / 20 test images per class, 64 px
    python -m bench.resume_exact --per-class 0   # every image (slow on a CPU)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import FRUITS_ROOT, REPO_ROOT, RESULTS_DIR, subset_folder

KILL_AFTER = Path("checkpoints") / "last.ckpt"


def train_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def run_killed_after_first_checkpoint(run_dir: Path, overrides: list[str]) -> None:
    process = subprocess.Popen(train_command(run_dir, overrides), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run_dir / KILL_AFTER).is_file():
        if process.poll() is not None:
            raise SystemExit(f"the run ended (exit {process.returncode}) before its first checkpoint")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its DataLoader workers, as an OOM killer or a node loss
    process.wait()


def epoch_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """The last value of each metric per epoch in metrics.csv (a resumed run appends rows after the old ones)."""
    rows: dict[int, dict[str, float]] = {}
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            values = rows.setdefault(int(float(row["epoch"])), {})
            values.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=FRUITS_ROOT)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_resume"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=60, help="train images per class (a third of it for "
                        "test); 0: all")
    args = parser.parse_args()
    out = args.out.resolve()
    root = args.root
    if args.per_class:
        root = subset_folder(args.root, out / "data", args.per_class, max(1, args.per_class // 3))
    overrides = [f"data.root={root}", "model.pretrained=false", f"model.img_size={args.img_size}",
                 "trainer=cpu", f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false", "seed=42"]
    reference, resumed = out / "reference", out / "resumed"
    for d in (reference, resumed):
        if d.exists():
            raise SystemExit(f"{d} exists: pass another --out")
    subprocess.run(train_command(reference, overrides), check=True, stdout=subprocess.DEVNULL)
    run_killed_after_first_checkpoint(resumed, overrides)
    subprocess.run(train_command(resumed, [*overrides, "ckpt_path=last"]), check=True, stdout=subprocess.DEVNULL)

    ref_rows, res_rows = epoch_rows(reference), epoch_rows(resumed)
    ref_sum = json.loads((reference / "summary.json").read_text())
    res_sum = json.loads((resumed / "summary.json").read_text())
    print("| epoch | reference train loss | resumed train loss | reference val acc | resumed val acc |")
    print("|---|---|---|---|---|")
    for epoch in sorted(e for e, values in ref_rows.items() if "train/loss_epoch" in values):  # not the test row
        a, b = ref_rows[epoch], res_rows.get(epoch, {})
        print(f"| {epoch} | {a.get('train/loss_epoch', float('nan')):.6f} | {b.get('train/loss_epoch', float('nan')):.6f}"
              f" | {a.get('val/acc', float('nan')):.6f} | {b.get('val/acc', float('nan')):.6f} |")
    for key in sorted(ref_sum["test"]):
        print(f"test {key}: reference {ref_sum['test'][key]} resumed {res_sum['test'].get(key)}")
    result = {"settings": overrides, "per_class": args.per_class, "reference": {"epochs": ref_rows, "test": ref_sum["test"]},
              "resumed": {"epochs": res_rows, "test": res_sum["test"]},
              "identical": ref_rows == res_rows and ref_sum["test"] == res_sum["test"]}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "resume.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"identical: {result['identical']}; written {RESULTS_DIR / 'resume.json'}")


if __name__ == "__main__":
    main()
