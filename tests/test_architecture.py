"""The package's shape: light inference imports, no import cycles, one pattern for console scripts, configs
whose `_target_` nodes are the objects, sweeps that need -m."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hydra.utils
import lightning as L
import pytest
import tomllib
import torch
from conftest import CONF_DIR, REPO_ROOT, compose_config, run_cli
from omegaconf import DictConfig

HEAVY = ("lightning", "hydra", "matplotlib", "wandb", "transformers")
PACKAGE = REPO_ROOT / "vitcls"


def loaded_heavy_packages(code: str) -> list[str]:
    """The heavy packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_predictor_imports_no_training_stack():
    assert loaded_heavy_packages("from vitcls import Predictor") == []


def test_predict_command_imports_no_training_stack():
    code = (
        "from vitcls.cli.predict import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import vitcls.inference.files, vitcls.inference.export_dir"
    )
    assert loaded_heavy_packages(code) == []


def test_wandb_still_imports_after_the_predictor():
    assert loaded_heavy_packages("from vitcls import Predictor\nimport wandb") == ["wandb"]


def test_training_start_up_leaves_wandb_to_the_wandb_logger():
    # timm would import wandb for its own training script (half a second of every train.py/eval.py start-up).
    code = ("from vitcls.cli.hydra_job import hydra_entry_point\nhydra_entry_point('train', print)\n"
            "import vitcls.run.lifecycle, vitcls.run.studies, vitcls.cli.eval")
    assert "wandb" not in loaded_heavy_packages(code)
    assert "wandb" in loaded_heavy_packages(f"{code}\nimport wandb")  # hidden only while timm imports


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_is_a_cli_module_runnable_with_python_m():
    scripts = console_scripts()
    assert {"vitcls-train", "vitcls-eval", "vitcls-predict", "vitcls-export", "vitcls-compare", "vitcls-data"} <= set(
        scripts
    )
    for command, target in scripts.items():
        module = f"vitcls.cli.{command.removeprefix('vitcls-')}"
        assert target == f"{module}:main", command
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
        )
        assert result.returncode == 0, (module, result.stderr[-2000:])
        assert "usage" in result.stdout.lower() or "== Config ==" in result.stdout, module


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """vitcls modules imported when `path` is imported (not those imported inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(child, ast.Import):
                found |= {alias.name for alias in child.names}
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found |= {f"{child.module}.{alias.name}" for alias in child.names}
    return {name for name in found if name.startswith("vitcls")}


def test_no_import_cycles_between_vitcls_modules():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}
    visiting, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(name):], name])}"
        visiting.append(name)
        for imported in graph[name]:
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)
    assert len(done) > 30  # the graph really was built


def test_no_comment_cites_documents_outside_the_repository():
    """A comment states its reason itself: a reader who has only the repository cannot follow a pointer to a
    planning document kept beside it, so the names of those documents must not appear in the code."""
    for path in [*PACKAGE.rglob("*.py"), *CONF_DIR.rglob("*.yaml"), *(REPO_ROOT / "bench").rglob("*.py")]:
        text = path.read_text()
        assert "DESIGN" not in text and "pitfall" not in text.lower(), path


# --- configs: every `_target_` node is the object ---------------------------------------------------
@pytest.fixture
def composed(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    return compose_config("train", [f"data.root={root}", f"paths.output_dir={tmp_path / 'run'}",
                                    "model.pretrained=false", "model.img_size=32"])


def test_data_node_instantiates_as_composed(composed):
    from vitcls.data.datamodule import ImageFolderDataModule

    datamodule = hydra.utils.instantiate(composed.data)
    assert isinstance(datamodule, ImageFolderDataModule) and datamodule.class_names == ["a", "b"]


def test_model_parts_instantiate_as_composed(composed):
    from vitcls.models.backbone import create_backbone
    from vitcls.models.features import FeatureTap
    from vitcls.models.heads import Head

    backbone = create_backbone(**{k: v for k, v in composed.model.items() if k not in ("train_blocks", "bitfit", "compile")})
    tap = hydra.utils.instantiate(composed.tap, features="cls")(backbone)
    assert isinstance(tap, FeatureTap)
    for head_file in sorted((CONF_DIR / "head").glob("*.yaml")):
        node = compose_config("train", [f"head={head_file.stem}"]).head
        head = hydra.utils.instantiate(node)(in_features=192, num_classes=3)
        assert isinstance(head, Head) and type(head).name == head_file.stem
    optimizer = hydra.utils.instantiate(composed.optim)(backbone, torch.nn.Linear(192, 2))
    scheduler = hydra.utils.instantiate(composed.sched)(optimizer, total_steps=10)
    assert scheduler.optimizer is optimizer
    assert isinstance(hydra.utils.instantiate(composed.loss), torch.nn.Module)


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_cpu"])
def test_trainer_nodes_instantiate_as_composed(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}", f"paths.output_dir={tmp_path}"])
    assert isinstance(hydra.utils.instantiate(cfg.trainer), L.Trainer)


@pytest.mark.parametrize("group, option", [
    *[("callbacks", p.stem) for p in sorted((CONF_DIR / "callbacks").glob("*.yaml"))],
    *[("logger", p.stem) for p in sorted((CONF_DIR / "logger").glob("*.yaml")) if p.stem != "tensorboard"],
])
def test_callback_and_logger_entries_instantiate_as_composed(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config("train", [f"{group}={option}", f"paths.output_dir={tmp_path}"])
    nodes = [node for node in cfg[group].values() if isinstance(node, DictConfig) and "_target_" in node]
    assert nodes
    for node in nodes:
        assert hydra.utils.instantiate(node) is not None


def test_model_options_share_one_base():
    for option in ("vit_tiny", "vit_small", "vit_base"):
        text = (CONF_DIR / "model" / f"{option}.yaml").read_text()
        assert "- timm_vit" in text and "train_blocks" not in text
        cfg = compose_config("train", [f"model={option}"])
        assert cfg.model.train_blocks == "all" and option.removeprefix("vit_") in cfg.model.name


def test_a_sweep_without_multirun_fails_and_says_to_add_m():
    result = run_cli("train.py", "sweep=heads", "model.pretrained=false", expect_success=False)
    assert result.returncode == 2
    assert "add -m" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_sweeps_live_in_their_own_group():
    from hydra import compose, initialize_config_dir

    assert not list((CONF_DIR / "experiment").glob("*sweep*"))
    sweeps = sorted((CONF_DIR / "sweep").glob("*.yaml"))
    assert {"heads", "head_designs"} <= {p.stem for p in sweeps}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for sweep in sweeps:
            cfg = compose("train", [f"sweep={sweep.stem}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.params, sweep
