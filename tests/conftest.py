"""Shared fixtures: small generated image folders, the real Fruits-360 subset, composed configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from checkout_guard import CheckoutGuard
from cpu_kinds import CPU_KINDS, fake_cpu_machine
from hydra import compose, initialize_config_dir
from PIL import Image

from vitcls.config import config_dir, register_resolvers

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = config_dir()
register_resolvers()
FRUITS_ROOT = Path(os.environ.get("FRUITS360_ROOT", REPO_ROOT.parent / "shared" / "data" / "fruits360-10"))

_checkout_guard = CheckoutGuard(REPO_ROOT)


def pytest_sessionstart(session):
    _checkout_guard.start()
    # Hypothesis would keep its examples and caches in ./.hypothesis: pytest's cache directory holds them instead.
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        cache = session.config.cache if hasattr(session.config, "cache") else None
        storage = cache.mkdir("hypothesis") if cache else Path(tempfile.mkdtemp(prefix="vitcls-tests-hypothesis-"))
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(storage)
        if not cache:
            session.config.add_cleanup(lambda: shutil.rmtree(storage, ignore_errors=True))


def pytest_sessionfinish(session, exitstatus):
    if _checkout_guard.finish() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _checkout_guard.new:
        terminalreporter.write_sep("=", "files left in the checkout", red=True)
        terminalreporter.write_line(_checkout_guard.report(), red=True)


# Small settings that keep CPU runs short: vit_tiny at 32px is 4 patches + CLS.
FAST_OVERRIDES = [
    "model.pretrained=false",
    "model.img_size=32",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.num_workers=0",
    "data.batch_size=4",  # tiny generated folders: the batch must fit in the training set
]


@pytest.fixture(autouse=True)
def own_wandb_service_per_process(monkeypatch):
    """A W&B run opened inside the pytest process saves its service's address in WANDB_SERVICE; child processes
    would inherit it and share that service, which still holds the runs of a child killed by a test (a resumed
    run then fails with "run ID ... is in use"). Every process a test starts gets a service of its own, as for
    a user."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(params=list(CPU_KINDS))
def cpu_kind(request, monkeypatch):
    """The test runs once per CPU kind (AVX2 only, AVX-512 without AMX, AMX bf16), on a faked CPU-only machine."""
    kind = CPU_KINDS[request.param]
    fake_cpu_machine(monkeypatch, kind)
    return kind


@pytest.fixture(scope="session")
def fruits_root() -> Path:
    if not (FRUITS_ROOT / "train").is_dir():
        pytest.skip(f"Fruits-360 subset not found at {FRUITS_ROOT} (set FRUITS360_ROOT to run these tests)")
    return FRUITS_ROOT


def write_image(path: Path, rng: np.random.Generator, size=(24, 20), mode="RGB", colour=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    else:
        array = np.broadcast_to(np.asarray(colour, dtype=np.uint8), (size[1], size[0], 3)).copy()
        array = np.clip(array.astype(int) + rng.integers(-20, 21, array.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def make_image_folder(root: Path, classes: dict[str, int], split: str | None = None, ext=".png", seed=0,
                      colours: dict[str, tuple] | None = None) -> Path:
    """root[/split]/<class>/img_<i><ext> with `classes[name]` images each (solid-ish colour per class)."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for index, (name, count) in enumerate(classes.items()):
        colour = (colours or {}).get(name, ((index * 97) % 256, (index * 57 + 80) % 256, (index * 31 + 160) % 256))
        for i in range(count):
            write_image(base / name / f"img_{i:03d}{ext}", rng, colour=colour)
    return root


@pytest.fixture
def image_folder_factory(tmp_path):
    def factory(classes: dict[str, int], splits=("train", "test"), seed=0, **kwargs) -> Path:
        root = tmp_path / "images"
        for index, split in enumerate(splits):  # a seed per split: no identical images across splits
            make_image_folder(root, classes, split, seed=seed + index, **kwargs)
        return root

    return factory


def compose_config(config_name: str = "train", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


def run_cli(script, *overrides, expect_success=True, env=None):
    """`python <script> <overrides>` from the repository root, as a user runs it."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    if expect_success:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def build_module_of(cfg, class_names):
    """The ClassifierModule a run of `cfg` builds (its study's designs, one device)."""
    from vitcls.distributed import BatchLayout
    from vitcls.run.lifecycle import build_module
    from vitcls.run.studies import study_of

    layout = BatchLayout(per_device=cfg.data.batch_size, devices=1, num_nodes=1, accumulate=1)
    return build_module(cfg, study_of(cfg).designs(cfg), list(class_names), layout)


def train_in_process(output_dir, *overrides):
    """A training run (vitcls.cli.train.run_training) of the composed train config, with the fast CPU settings."""
    from vitcls.cli.train import run_training as run

    return run(compose_config("train", [f"paths.output_dir={output_dir}", *FAST_OVERRIDES, *overrides]))


TINY_MODEL = "vit_tiny_patch16_224"  # width 192; at 32 px: CLS + 4 patches


def head_of(head) -> dict:
    """A head spec (`{"name": "mlp", ...}`) from a registered name or a spec dict."""
    return {"name": head} if isinstance(head, str) else dict(head)


def tiny_net_config(head="linear", tap=None, class_names=("a", "b", "c"), **backbone) -> dict:
    """An ImageClassifier config: vit_tiny at 32 px, random weights (`backbone` kwargs override)."""
    return {
        "backbone": {"name": TINY_MODEL, "pretrained": False, "img_size": 32, **backbone},
        "head": head_of(head),
        "class_names": list(class_names),
        "tap": tap,
    }


def tiny_net(head="linear", tap=None, class_names=("a", "b", "c"), **backbone):
    """A plain ImageClassifier network (vitcls.models.classifier)."""
    from vitcls.models.classifier import ImageClassifier

    return ImageClassifier(**tiny_net_config(head, tap, class_names, **backbone))


def tiny_module(head="linear", tap=None, train_blocks="all", bitfit=False, class_names=("a", "b", "c"),
                backbone=None, **kwargs):
    """A ClassifierModule around a tiny network; `kwargs` go to ClassifierModule (optimizer, scheduler, loss...)."""
    from vitcls.models.lightning_module import ClassifierModule

    return ClassifierModule(
        net=tiny_net_config(head, tap, class_names, **(backbone or {})),
        train_blocks=train_blocks,
        bitfit=bitfit,
        **kwargs,
    )
