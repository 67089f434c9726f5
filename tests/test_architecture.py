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
# What a console script needs only once a job runs.
JOB_ONLY = ("torch", "timm", "lightning", "torchmetrics", "matplotlib", "wandb")
PACKAGE = REPO_ROOT / "vitcls"


def loaded_heavy_packages(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The `heavy` packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))"
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


@pytest.mark.parametrize("script", ["train", "eval"])
@pytest.mark.parametrize("argv", [["--help"], ["trainer=no_such_trainer"]], ids=["help", "config_error"])
def test_help_and_a_config_that_does_not_compose_import_nothing_a_job_needs(script, argv):
    code = (f"import sys\nsys.argv = ['{script}.py', *{argv!r}]\nfrom vitcls.cli.{script} import main\n"
            "try:\n    main()\nexcept SystemExit as stop:\n    print('exit code', stop.code)")
    assert loaded_heavy_packages(code, JOB_ONLY) == []
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    help_asked = argv == ["--help"]
    assert ("== Config ==" in result.stdout) == help_asked
    assert result.stdout.strip().endswith("exit code 0" if help_asked else "exit code 1")
    assert help_asked or "Could not find 'trainer/no_such_trainer'" in result.stderr


def test_wandb_still_imports_after_the_predictor():
    assert loaded_heavy_packages("from vitcls import Predictor\nimport wandb") == ["wandb"]


def test_training_start_up_leaves_wandb_to_the_wandb_logger(tmp_path):
    # timm would import wandb for its own training script (half a second of every train.py/eval.py job start-up).
    code = ("import sys\nfrom vitcls.cli.hydra_job import hydra_entry_point\n"
            "def job(cfg):\n    import vitcls.run.lifecycle, vitcls.run.studies, vitcls.cli.eval\n"
            f"sys.argv = ['train.py', 'hydra.run.dir={tmp_path}']\nhydra_entry_point('train', job)()")
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


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_modules(path: Path) -> set[str]:
    """Every vitcls module that importing `path` can import, at any depth: module level, inside functions and
    methods, and the packages above each (Python runs their __init__ first). Only `if TYPE_CHECKING:` blocks,
    which never run, are left out."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    # A module's own packages are being imported already when it runs: importing them adds nothing.
    own_packages = {".".join(name.split(".")[:end]) for end in range(1, len(name.split(".")))}
    modules = set()
    for imported in found:
        parts = imported.split(".")
        modules.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return {m for m in modules if m in MODULES and m != name and m not in own_packages}


def test_no_import_cycles_between_vitcls_modules_at_any_depth():
    graph = {name: imported_modules(path) for name, path in MODULES.items()}
    visiting, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(name):], name])}"
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert len(done) > 60  # the graph really was built
    # the check itself finds a cycle hidden in a function
    assert "vitcls.run.lifecycle" in graph["vitcls.cli.train"] and "vitcls.run.studies" in graph["vitcls.cli.train"]


def test_data_and_models_do_not_import_each_other():
    for name, path in MODULES.items():
        imported = imported_modules(path)
        if name.startswith("vitcls.data"):
            assert not {m for m in imported if m.startswith("vitcls.models")}, name
        if name.startswith("vitcls.models"):
            assert not {m for m in imported if m.startswith("vitcls.data")}, name


def test_only_the_loggers_import_wandb():
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        if "wandb" in names:
            assert name.startswith("vitcls.loggers."), f"{name} imports wandb"


def test_only_the_adapter_package_names_an_adapter():
    """A new adapter is one class and one YAML: no module outside vitcls.adapters may know any adapter by name."""
    import re

    named = re.compile(r"\b(lora|vpt|peft)\b", re.IGNORECASE)
    for name, path in MODULES.items():
        if not name.startswith("vitcls.adapters"):
            found = named.search(path.read_text())
            assert found is None, f"{name} names {found.group(0)!r}"


def test_the_top_level_shows_the_design():
    """A handful of shared modules at the top, everything else in subpackages; no two modules whose names make a
    reader guess which is which."""
    top_level = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top_level) <= 8, top_level
    stems = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__" and p.parent.name != "cli"]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)
    assert not {s.rstrip("s") for s in stems if s.endswith("s")} & {s for s in stems if not s.endswith("s")}


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


def test_a_sweep_without_multirun_fails_and_says_to_add_m(tmp_path):
    result = run_cli("train.py", "sweep=heads", "model.pretrained=false", f"hydra.run.dir={tmp_path / 'run'}",
                     expect_success=False)
    assert result.returncode == 2
    assert "add -m" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run" / "FAILED.json").is_file()


def test_sweeps_live_in_their_own_group():
    from hydra import compose, initialize_config_dir

    assert not list((CONF_DIR / "experiment").glob("*sweep*"))
    sweeps = sorted((CONF_DIR / "sweep").glob("*.yaml"))
    assert {"heads", "head_search", "adaptation_ladder"} <= {p.stem for p in sweeps}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for sweep in sweeps:
            cfg = compose("train", [f"sweep={sweep.stem}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.params, sweep
