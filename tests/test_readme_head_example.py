"""The README's "Adding a head" example, run as written: a head defined outside vitcls, trained, exported and
predicted, and the one-line error when its code is missing."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import FAST_OVERRIDES, REPO_ROOT

pytestmark = pytest.mark.slow


def readme_blocks() -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("### Adding a head") :]
    section = section[: section.index("\n### ", 10)]
    return {lang: body for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)}


def run(command: list[str], cwd, expect_success=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if expect_success:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_readme_head_example_trains_exports_and_predicts(tmp_path):
    blocks = readme_blocks()
    module_file = blocks["python"].splitlines()[0].split()[1].rstrip(":")  # "# my_heads.py: ..."
    yaml_file = blocks["yaml"].splitlines()[0].split()[1]  # "# my_conf/head/low_rank.yaml ..."
    (tmp_path / module_file).write_text(blocks["python"])
    (tmp_path / yaml_file).parent.mkdir(parents=True)
    (tmp_path / yaml_file).write_text(blocks["yaml"])
    train_line, export_line, predict_line = [shlex.split(line) for line in blocks["bash"].strip().splitlines()]

    assert train_line[0] == "PYTHONPATH=." and train_line[2] == "train.py"
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "hydra.run.dir=run"]
    run([sys.executable, str(REPO_ROOT / "train.py"), *train_line[3:], *FAST_OVERRIDES, *short], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    hparams = __import__("torch").load(summary["best_ckpt"], weights_only=True)["hyper_parameters"]
    assert hparams["net"]["head"] == {"name": "low_rank", "module": "my_heads", "rank": 32}

    assert export_line[:2] == ["vitcls-export", "outputs/train/runs/<run>/checkpoints/<best>.ckpt"]
    run([sys.executable, "-m", "vitcls.cli.export", summary["best_ckpt"], *export_line[2:]], tmp_path)
    assert predict_line[:2] == ["vitcls-predict", "my_model"]
    inputs = str(tmp_path / "data" / "synthetic-fruit-shapes" / "test" / "apple")
    predicted = run([sys.executable, "-m", "vitcls.cli.predict", "my_model", inputs, *predict_line[3:],
                     "--num-workers", "0"], tmp_path)
    assert len(predicted.stdout.strip().splitlines()) == 1 + 20  # header + one row per test apple

    without_code = run([sys.executable, "-m", "vitcls.cli.predict", "my_model", inputs], tmp_path,
                       expect_success=False)
    assert without_code.returncode == 2
    message = without_code.stderr.strip().splitlines()
    assert len(message) == 1, without_code.stderr
    assert "'low_rank'" in message[0] and "'my_heads'" in message[0] and "--import my_heads" in message[0]
