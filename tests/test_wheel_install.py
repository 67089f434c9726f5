"""`pip install .` (a wheel, not editable) works from any directory: conf/ ships inside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
TOP_LEVEL_OUTPUTS = ("build", "dist", "outputs", "multirun", "wandb", "data", "lightning_logs")


def check(command: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=1200,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the vitcls wheel installed (--no-deps); its dependencies come from the
    test environment's site-packages through a .pth file."""
    work = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the source tree (build/, vitcls.egg-info/): build a copy, not the checkout
    source = work / "source"
    shutil.copytree(REPO_ROOT, source, ignore=lambda folder, names: [
        name for name in names
        if name in ("__pycache__", ".pytest_cache", ".ruff_cache") or name.endswith(".egg-info")
        or (Path(folder) == REPO_ROOT and (name.startswith(".") or name in TOP_LEVEL_OUTPUTS))
    ])
    check([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-w", work / "dist"],
          cwd=work)
    wheel = next((work / "dist").glob("vitcls-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf_files = {f"vitcls/conf/{p.relative_to(REPO_ROOT / 'conf').as_posix()}" for p in (REPO_ROOT / "conf").rglob("*.yaml")}
    assert conf_files and conf_files <= names, sorted(conf_files - names)
    assert "vitcls/cli/train.py" in names and "vitcls/inference/predictor.py" in names

    venv = work / "venv"
    check([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work)
    site_packages = Path(
        subprocess.check_output([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                text=True).strip()
    )
    (site_packages / "test_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--quiet", wheel],
          cwd=work)
    return venv


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    result = check([installed / "bin" / "python", "-c",
                    "import vitcls, vitcls.config as c; print(vitcls.__file__, c.config_dir())"], cwd=tmp_path)
    module_file, conf = result.stdout.split()
    assert str(installed) in module_file and Path(conf) == Path(module_file).parent / "conf"


def test_train_and_eval_console_scripts_run_from_another_directory(installed, tmp_path):
    bin_dir = installed / "bin"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    check(["vitcls-train", "experiment=demo", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
           "hydra.run.dir=run"], cwd=tmp_path, env=env)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_trained"] == 1 and Path(summary["best_ckpt"]).is_file()
    assert (tmp_path / "data" / "synthetic-fruit-shapes" / "train").is_dir()  # relative to where it runs

    check(["vitcls-eval", f"ckpt_path={summary['best_ckpt']}", "trainer.enable_progress_bar=false",
           "hydra.run.dir=eval"], cwd=tmp_path, env=env)
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["test"]["acc"] == pytest.approx(summary["test"]["acc"], abs=1e-6)
