"""The documentation's commands work as written (README.md and docs/*.md; the block conventions: tests/docs_blocks.py).

Every recipe marked `<!-- runnable: NAME -->` runs in a fresh folder under tmp_path that holds `photos`, a small
synthetic demo folder (unless the recipe makes it), and links this checkout's train.py, eval.py and vitcls package
(so that commands run from a checkout, and `PYTHONPATH=.`, use this checkout's code). Commands run with bash as written; training commands get small CPU settings appended for every key
they do not set themselves (FAST_OVERRIDES, a few batches). Beyond success, each recipe's promise is checked against
what it wrote (RECIPE_CHECKS). Every other command of the docs is checked without running it: train.py / eval.py
overrides compose, the console scripts accept their arguments, Python blocks compile, YAML blocks load, links lead
to files and headings that exist.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import CONF_DIR, FAST_OVERRIDES, REPO_ROOT
from docs_blocks import (
    Block,
    entry_point,
    github_anchor,
    read_blocks,
    setting_keys,
    shell_commands,
    words,
)

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
BLOCKS = [block for page in PAGES for block in read_blocks(page)]
RECIPES: dict[str, list[Block]] = {}
for _block in BLOCKS:
    if _block.recipe:
        RECIPES.setdefault(f"{_block.page.stem}:{_block.recipe}", []).append(_block)

TRAIN_FAST = [*FAST_OVERRIDES, "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
EVAL_FAST = ["trainer=cpu", "trainer.enable_progress_bar=false", "data.num_workers=0"]
DEMO_FAST = {"--train-per-class": "8", "--test-per-class": "4"}
SIGTERM_EXIT = 128 + signal.SIGTERM


def with_fast_settings(command: str) -> str:
    """The command with the small CPU settings appended for what it does not set itself."""
    found = entry_point(command)
    if found is None:
        return command
    script, arguments = found
    if script in ("train", "eval"):
        fast = TRAIN_FAST if script == "train" else EVAL_FAST
        given = setting_keys(arguments)
        extra = [setting for setting in fast if setting.split("=", 1)[0] not in given]
    elif script == "data" and arguments[:1] == ["demo"]:
        extra = [f"{option} {value}" for option, value in DEMO_FAST.items() if option not in arguments]
    else:
        extra = []
    return " ".join([command, *extra])


def make_workdir(path: Path, makes_photos: bool) -> Path:
    """A folder for a recipe: this checkout's train.py, eval.py and vitcls linked in (`python train.py` and
    `PYTHONPATH=.` use this checkout's code), and the demo folder `photos` (8 train and 4 test images per class)."""
    from vitcls.data.demo import SyntheticFruitShapes

    path.mkdir()
    for name in ("train.py", "eval.py", "vitcls"):
        (path / name).symlink_to(REPO_ROOT / name)
    if not makes_photos:
        SyntheticFruitShapes(train_per_class=8, test_per_class=4).prepare(path / "photos")
    return path


def environment(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "VITCLS_LOG_DIR": str(workdir / "outputs"),
        "VITCLS_DATA_DIR": str(workdir / "data"),
        "MPLBACKEND": "Agg",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }


def run_interrupted(command: str, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a training command and send it SIGTERM once its run directory holds its first last.ckpt (a preemption)."""
    run_dir = next(word.split("=", 1)[1] for word in words(command) if word.startswith("hydra.run.dir="))
    last = workdir / run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(["bash", "-c", command], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


# --- what each recipe promises ----------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def images_of_the_test_split(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "photos" / "test").rglob("*") if p.is_file() and not p.name.startswith("."))


def predicted_labels(workdir: Path, file: str, column: str = "label") -> dict[str, str]:
    """{image path: predicted label} of a predictions CSV (paths relative to the folder the command ran in)."""
    return {os.path.realpath(workdir / row["path"]): row[column] for row in read_csv(workdir / file)}


def check_train(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    assert "ready to train" in results[1].stdout
    summary = read_json(workdir / "runs/first/summary.json")
    assert summary["num_samples"]["test"] == len(images_of_the_test_split(workdir))
    (eval_json,) = workdir.glob("outputs/eval/runs/*/eval.json")  # eval.py's own run directory
    scored = read_json(eval_json)["test"]
    for metric in ("acc", "f1_macro", "loss"):  # the same checkpoint on the same test split: the same numbers
        assert scored[metric] == pytest.approx(summary["test"][metric], abs=1e-6), metric


def check_compare(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    heads = read_csv(workdir / "runs/heads/compare.csv")
    assert {row["design"] for row in heads} == {"head=linear", "head=cosine"}
    assert all(row["n_seeds"] == "2" and row["seed_variance"] == "own" for row in heads)
    assert [row["vs_best"] for row in heads][0] == "best" and heads[1]["p_vs_best_holm"] != ""
    assert "Verdict: " in (workdir / "runs/heads/compare.md").read_text()
    banks = read_csv(workdir / "runs/banks/compare.csv")
    assert len(banks) == 3 * 2 and all(row["n_seeds"] == "2" for row in banks)
    labels = {"best", "better", "worse", "not distinguishable", "unknown"}
    assert {row["vs_best"] for row in banks} <= labels and sum(row["vs_best"] == "best" for row in banks) == 1
    assert len(list((workdir / "runs/banks").glob("*/bank.json"))) == 2  # one bank per seed
    for job in ("runs/banks/0", "runs/banks/1"):  # the bank's own selection: its rank 1 is the selected head
        bank = read_json(workdir / job / "bank.json")
        assert next(h["name"] for h in bank["heads"] if h["rank"] == 1) == bank["selected"]["name"]


def check_head(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    import torch

    summary = read_json(workdir / "runs/low_rank/summary.json")
    hparams = torch.load(summary["best_ckpt"], weights_only=True)["hyper_parameters"]
    (head,) = [entry["head"] for entry in hparams["net"]["heads"]]
    assert head == {"name": "low_rank", "module": "my_heads", "rank": 32}
    assert len(results[2].stdout.strip().splitlines()) == 1 + len(images_of_the_test_split(workdir))  # header + a row per image
    without_code = subprocess.run(["bash", "-c", "vitcls-predict low_rank_model photos/test"], cwd=workdir,
                                  env=environment(workdir), capture_output=True, text=True, timeout=600)
    assert without_code.returncode == 2
    message = without_code.stderr.strip().splitlines()
    assert len(message) == 1, without_code.stderr
    assert "'low_rank'" in message[0] and "'my_heads'" in message[0] and "--imports my_heads" in message[0]


def check_logger(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    records = [json.loads(line) for line in (workdir / "runs/logged/log.jsonl").read_text().splitlines()]
    summary = read_json(workdir / "runs/logged/summary.json")
    (config,) = [r for r in records if "config" in r]
    assert config["config"]["logger"]["jsonl"]["path"].endswith("runs/logged/log.jsonl")  # the resolved config
    assert config["facts"]["params/trainable"] == summary["params"]["trainable"]
    assert any("val/f1_macro" in r.get("metrics", {}) for r in records)  # Lightning's metrics, as they are logged
    (results_record,) = [r for r in records if "summary" in r]
    assert results_record["summary"]["test"] == summary["test"]
    assert [head["test"] for head in results_record["heads"]] == [summary["test"]]
    assert (workdir / "runs/logged/metrics.csv").is_file()  # the csv logger is kept


def check_adapter(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    summary = read_json(workdir / "runs/ssf/summary.json")
    depth, width, classes = 12, 192, len(summary["class_names"])  # vit_tiny
    assert summary["params"]["trainable"] == depth * 2 * width + (width + 1) * classes  # scales, shifts, head
    config = read_json(workdir / "ssf_model/config.json")
    assert config["model"]["adapter"] is None and config["source"]["merged_adapter"]["name"] == "ssf"
    in_run = predicted_labels(workdir, "runs/ssf/test_predictions.csv", "pred_label")
    assert predicted_labels(workdir, "ssf_predictions.csv") == in_run  # the merged export predicts as the run did
    without_code = subprocess.run(["bash", "-c", "vitcls-export runs/ssf/checkpoints/last.ckpt elsewhere"],
                                  cwd=workdir, env=environment(workdir), capture_output=True, text=True, timeout=600)
    assert without_code.returncode == 2 and "'ssf'" in without_code.stderr, without_code.stderr
    assert not (workdir / "elsewhere").exists()


def check_export(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    from safetensors.torch import load_file

    summary = read_json(workdir / "runs/fruit/summary.json")
    at_the_end, later = load_file(workdir / "runs/fruit/export/model.safetensors"), load_file(
        workdir / "fruit_model/model.safetensors")
    assert at_the_end.keys() == later.keys() and all(at_the_end[k].equal(later[k]) for k in later)
    rows = read_csv(workdir / "predictions.csv")
    assert len(rows) == len(images_of_the_test_split(workdir)) and {"label", "score", "label_3", "score_3"} <= set(rows[0])
    metrics = read_json(workdir / "scored/metrics.json")["test"]
    assert metrics["acc"] == pytest.approx(summary["test"]["acc"], abs=1e-6)  # the run's test images, scored again
    assert (workdir / "scored/confusion_matrix.csv").is_file()
    (top3,) = results[-1].stdout.strip().splitlines()  # predict.py: one image, its three best classes
    assert top3.count("'label'") == 3 and top3.count("'score'") == 3


def check_resume(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    assert results[0].returncode == SIGTERM_EXIT, results[0].stdout[-3000:]
    summary = read_json(workdir / "runs/long/summary.json")
    assert summary["resumed_from"] and summary["epochs_trained"] == 5


def check_demo(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    report = read_json(workdir / "shapes_report.json")
    assert report["ok"] is True
    assert len(list((workdir / "shapes" / "train" / "apple").iterdir())) == 20


def check_suite(workdir: Path, results: list[subprocess.CompletedProcess]) -> None:
    board = read_json(workdir / "runs/suite/leaderboard.json")
    assert len(board["datasets"]) == 2 and {row["protocol"] for row in board["rows"]} == {"head", "knn", "logreg"}
    assert all(curves for curves in board["few_shot"].values())
    assert "Leaderboard" in results[1].stdout


RECIPE_CHECKS: dict[str, Callable[[Path, list[subprocess.CompletedProcess]], None]] = {
    "README:suite": check_suite,
    "README:train": check_train,
    "README:compare": check_compare,
    "README:head": check_head,
    "README:logger": check_logger,
    "training:adapter": check_adapter,
    "README:export": check_export,
    "README:resume": check_resume,
    "data:demo": check_demo,
}
INTERRUPTED = {"README:resume": 0}  # recipe -> the command that a SIGTERM stops once it has a checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_runnable_recipe_works_as_written(recipe, tmp_path):
    blocks = RECIPES[recipe]
    commands = [command for block in blocks if block.is_shell for command in shell_commands(block.text)]
    workdir = make_workdir(tmp_path / "work", makes_photos=any("vitcls-data demo photos" in c for c in commands))
    env = environment(workdir)
    results = []
    for block in blocks:
        if not block.is_shell:
            path = workdir / block.file_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
            continue
        for command in shell_commands(block.text):
            fast = with_fast_settings(command)
            if INTERRUPTED.get(recipe) == len(results):
                results.append(run_interrupted(fast, workdir, env))
                continue
            result = subprocess.run(["bash", "-c", fast], cwd=workdir, env=env, capture_output=True, text=True,
                                    timeout=900)
            assert result.returncode == 0, f"{block.where}: {fast}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            results.append(result)
    RECIPE_CHECKS.get(recipe, lambda *_: None)(workdir, results)


def test_every_recipe_the_docs_promise_is_marked_and_checked():
    assert set(RECIPE_CHECKS) <= set(RECIPES), f"checks for recipes no page marks: {set(RECIPE_CHECKS) - set(RECIPES)}"
    for name, blocks in RECIPES.items():
        assert any(block.is_shell for block in blocks), f"{name}: no commands to run"
        for block in blocks:
            if not block.is_shell:
                block.file_path()  # names its file


# --- every other command: composes, parses, compiles ------------------------------------------------------------
def first_values(arguments: list[str]) -> list[str]:
    """Hydra overrides with each swept list reduced to its first value (search spaces dropped): one job's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in arguments if "=" in a and not a.startswith("-")]
    kept = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            kept.append(override.input_line)
        elif override.is_discrete_sweep():
            first = next(iter(override.sweep_string_iterator()))
            kept.append(f"{override.get_key_element()}={first}")
    return kept


def documented_commands() -> list[tuple[str, str]]:
    return [(block.where, command) for block in BLOCKS if block.is_shell for command in shell_commands(block.text)]


def test_every_documented_command_composes_or_parses():
    from importlib import import_module

    from hydra import compose, initialize_config_dir

    from vitcls.config.validation import check_train_config
    from vitcls.run.studies import study_of

    checked, composed = 0, set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for where, command in documented_commands():
            found = entry_point(command)
            if found is None or "$(" in command or "hydra.searchpath" in command:
                continue  # not a vitcls command, or one that only the runnable recipes can run
            script, arguments = found
            checked += 1
            if script in ("train", "eval"):
                overrides = first_values(arguments)
                if (script, *overrides) in composed:
                    continue
                composed.add((script, *overrides))
                try:
                    cfg = compose(config_name=script, overrides=overrides)
                    if script == "train":  # the checks a run makes before it reads any folder
                        check_train_config(cfg)
                        study_of(cfg).check(cfg)
                except Exception as error:  # noqa: BLE001 (report which documented command broke)
                    pytest.fail(f"{where}: {command}\n{type(error).__name__}: {error}")
            else:
                try:
                    import_module(f"vitcls.cli.{script}").parse_args(arguments)
                except SystemExit:
                    pytest.fail(f"{where}: {command}: vitcls-{script} does not accept these arguments")
    assert checked >= 40, checked  # the docs are full of commands: finding few means the parsing broke


def test_every_documented_python_block_compiles_and_yaml_block_loads():
    for block in BLOCKS:
        if block.language == "python":
            compile(block.text, block.where, "exec")
        elif block.language == "yaml":
            assert isinstance(yaml.safe_load(block.text), dict), block.where


def test_every_link_between_the_docs_leads_to_a_file_and_heading():
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: link to {target}: no such file"
            if anchor and file.suffix == ".md":
                headings = [line for line in file.read_text().splitlines() if re.match(r"#{1,6} ", line)]
                assert anchor in {github_anchor(h) for h in headings}, f"{page.name}: link to {target}: no such heading"
