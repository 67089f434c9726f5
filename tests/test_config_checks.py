"""Bad settings are refused before any folder scan or model build, naming the setting and what is allowed."""

from __future__ import annotations

import json

import pytest
from conftest import FAST_OVERRIDES, REPO_ROOT, compose_config, run_cli

from vitcls.cli.train import run_training as run
from vitcls.errors import ConfigError
from vitcls.run.plan import check_run_dir


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.batch_size=0", "data.batch_size=0 is not allowed: a positive integer"),
        ("data.eval_batch_size=-2", "data.eval_batch_size=-2 is not allowed: a positive integer or null"),
        ("data.num_workers=-1", "data.num_workers=-1 is not allowed: null or an integer >= 0"),
        ("data.val_fraction=1.0", r"data.val_fraction=1.0 is not allowed: a number in \(0.0, 1.0\)"),
        ("data.val_fraction=0", r"data.val_fraction=0 is not allowed: a number in \(0.0, 1.0\)"),
        ("data.test_fraction=-0.1", r"data.test_fraction=-0.1 is not allowed"),
        (
            "data.on_bad_image=ignore",
            r"data.on_bad_image='ignore' is not allowed: one of \['error', 'skip'\]",
        ),
        ("data.max_image_pixels=0", "data.max_image_pixels=0 is not allowed"),
        ("model.img_size=-32", "model.img_size=-32 is not allowed: a positive integer or null"),
        ("model.drop_path_rate=1.0", r"model.drop_path_rate=1.0 is not allowed: a number in \[0.0, 1.0\)"),
        ("head.dropout=1.5", "head.dropout=1.5 is not allowed"),
        ("optim.lr=0", r"optim.lr=0 is not allowed: a number in \(0.0, inf\)"),
        ("optim.weight_decay=-0.01", "optim.weight_decay=-0.01 is not allowed"),
        ("loss.label_smoothing=1.0", "loss.label_smoothing=1.0 is not allowed"),
        (
            "model.name=vit_tiny_patch16_2244",
            r"model.name='vit_tiny_patch16_2244' is not a timm model.*'vit_tiny_patch16_224'",
        ),
        ("monitor=test/acc", r"monitor='test/acc' is not a validation metric: choose one of \['val/acc', "),
        ("monitor=val/f2", r"monitor='val/f2' is not a validation metric.*'val/loss'\]"),
    ],
)
def test_bad_setting_is_refused_before_the_folder_is_read(override, expected, tmp_path):
    # data.root does not exist: reading it first would raise a DatasetLayoutError instead
    cfg = compose_config(
        "train",
        [f"paths.output_dir={tmp_path}", f"data.root={tmp_path / 'missing'}", *FAST_OVERRIDES, override],
    )
    with pytest.raises(ConfigError, match=expected):
        run(cfg)


def test_unknown_group_option_lists_the_allowed_ones(tmp_path):
    result = run_cli(
        "train.py",
        "head=nope",
        f"data.root={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        expect_success=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    heads = sorted(path.stem for path in (REPO_ROOT / "conf" / "head").glob("*.yaml"))
    assert "Could not find 'head/nope'" in output
    assert "Available options in 'head':\n" + "".join(f"\t{name}\n" for name in heads) in output
    assert "Traceback" not in output


def test_a_used_run_directory_is_not_overwritten(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 6, "b": 6})
    run_dir = tmp_path / "run"
    (run_dir / "summary.json").parent.mkdir()
    (run_dir / "summary.json").write_text("{}")
    args = [f"paths.output_dir={run_dir}", f"data.root={root}", *FAST_OVERRIDES, "debug=fdr"]
    with pytest.raises(
        ConfigError, match=rf"the run directory {run_dir} already holds a run .*overwrite=true"
    ):
        run(compose_config("train", args))
    assert (run_dir / "summary.json").read_text() == "{}"
    summary = run(compose_config("train", [*args, "overwrite=true"]))
    assert json.loads((run_dir / "summary.json").read_text())["global_steps"] == summary["global_steps"] == 1
    assert (run_dir / "previous_attempts" / "1" / "summary.json").read_text() == "{}"  # moved aside, not lost


def test_resuming_into_a_used_run_directory_is_allowed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints\)"):
        check_run_dir(tmp_path, resuming=False, overwrite=False)
    check_run_dir(tmp_path, resuming=True, overwrite=False)
    check_run_dir(tmp_path, resuming=False, overwrite=True)
    check_run_dir(tmp_path / "fresh", resuming=False, overwrite=False)  # nothing there yet


def test_cli_refuses_a_fixed_run_dir_that_holds_a_run(tmp_path):
    run_dir = tmp_path / "fixed"
    (run_dir / "checkpoints").mkdir(parents=True)
    result = run_cli("train.py", f"data.root={tmp_path}", f"hydra.run.dir={run_dir}", expect_success=False)
    output = result.stdout + result.stderr
    assert (
        result.returncode == 2 and "already holds a run (checkpoints)" in output and "Traceback" not in output
    )
    assert not (run_dir / "FAILED.json").exists()  # the directory is another run's: nothing is written into it
