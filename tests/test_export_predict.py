"""Export directory -> Predictor (torch and ONNX) in a fresh process -> vitcls-predict CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FAST_OVERRIDES, REPO_ROOT, compose_config, make_image_folder, write_image
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms.functional import pil_to_tensor

from vitcls.cli.train import run_training as run
from vitcls.data.images import load_rgb
from vitcls.inference.export_dir import FORMAT_VERSION, export_checkpoint
from vitcls.inference.onnx import ExportError, export_onnx, verify_onnx
from vitcls.inference.predictor import Predictor
from vitcls.metrics import METRICS
from vitcls.models.classifier import ImageClassifier
from vitcls.models.lightning_module import ClassifierModule
from vitcls.precision import cpu_has_amx_bf16
from vitcls.preprocessing import build_eval_transform

CLASSES = {"blue": 8, "green": 8, "red": 8}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason="onnxruntime is not installed (pip install -e '.[onnx]')",
)


def run_module(module: str, *args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained by train.py with export.enabled=true (auto-export at the end of training)."""
    tmp = tmp_path_factory.mktemp("trained")
    root = tmp / "images"
    for split in ("train", "test"):
        make_image_folder(root, CLASSES, split, colours=COLOURS, seed=1 if split == "test" else 0)
    run_dir = tmp / "run"
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={run_dir}",
            *FAST_OVERRIDES,
            f"data.root={root}",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "head=mlp",
            "export.enabled=true",
            "data.crop_pct=1.0",
        ],
    )
    summary = run(cfg)
    return {
        "root": root,
        "run_dir": run_dir,
        "summary": summary,
        "ckpt": summary["best_ckpt"],
        "export": run_dir / "export",
    }


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory):
    return export_checkpoint(trained["ckpt"], tmp_path_factory.mktemp("onnx") / "export", onnx=True)


def test_training_writes_a_self_contained_export_directory(trained):
    export = trained["export"]
    assert trained["summary"]["paths"]["export_dir"] == str(export)
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((export / "config.json").read_text())
    checkpoint = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    net_config = checkpoint["hyper_parameters"]["net"]
    assert config["format_version"] == FORMAT_VERSION == 3
    assert config["class_names"] == net_config["class_names"] == ["blue", "green", "red"]
    assert config["num_classes"] == 3
    # "model" is the ImageClassifier config: the checkpoint's network, tap and head by registered name
    assert config["model"] == net_config
    [entry] = config["model"]["heads"]
    assert entry["head"]["name"] == "mlp" and entry["tap"]["features"] == "cls"
    assert config["timm_model"] == net_config["backbone"]["name"]
    assert config["preprocessing"]["input_size"] == [3, 32, 32]
    assert {"mean", "std", "interpolation"} <= set(config["preprocessing"])
    assert config["preprocessing"]["crop_pct"] == 1.0  # the run's data.crop_pct, not the backbone's 0.9
    # only backbone and head tensors, exactly those of the checkpoint's network
    tensors = load_file(export / "model.safetensors")
    assert all(key.startswith("net.") for key in checkpoint["state_dict"])
    assert set(tensors) == {key.removeprefix("net.") for key in checkpoint["state_dict"]}
    for key, value in tensors.items():
        assert torch.equal(value, checkpoint["state_dict"][f"net.{key}"]), key
    card = (export / "README.md").read_text()
    assert f"{trained['summary']['test']['f1_macro']:.4f}" in card and "Predictor.from_pretrained" in card


RELOAD_SCRIPT = """
import sys
from safetensors.torch import load_file, save_file
from vitcls import Predictor

directory, backend, inputs, outputs = sys.argv[1:]
predictor = Predictor.from_pretrained(directory, device="cpu", backend=backend)
images = load_file(inputs)["images"]
save_file({"logits": predictor.logits(images).contiguous()}, outputs)
print(",".join(predictor.class_names))
from hydra.core.global_hydra import GlobalHydra
training = {"vitcls.run.lifecycle", "vitcls.run.studies", "vitcls.cli.train", "lightning"} & set(sys.modules)
assert not training and not GlobalHydra.instance().is_initialized(), training  # no training code or config
"""


def reload_in_subprocess(directory, backend, images, tmp_path):
    inputs, outputs = tmp_path / f"in_{backend}.safetensors", tmp_path / f"out_{backend}.safetensors"
    save_file({"images": images}, inputs)
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(directory), backend, str(inputs), str(outputs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(outputs)["logits"], result.stdout.strip().split(",")


def test_reload_in_a_fresh_process_gives_identical_logits(trained, tmp_path):
    module, _ = ClassifierModule.from_checkpoint(trained["ckpt"])
    images = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        expected = module(images)
    logits, class_names = reload_in_subprocess(trained["export"], "torch", images, tmp_path)
    assert torch.equal(logits, expected)
    assert class_names == ["blue", "green", "red"]


@needs_onnxruntime
@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_a_fresh_process(trained, onnx_export, tmp_path):
    config = json.loads((onnx_export / "config.json").read_text())
    assert (onnx_export / "model.onnx").is_file()
    assert config["onnx"]["num_images"] == 8 and config["onnx"]["max_abs_diff_logits"] <= 1e-3
    module, _ = ImageClassifier.from_checkpoint(trained["ckpt"])
    images = torch.randn(7, 3, 32, 32)  # another batch size than the export sample (dynamic batch)
    with torch.inference_mode():
        expected = module(images)
    logits, class_names = reload_in_subprocess(onnx_export, "onnx", images, tmp_path)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert class_names == ["blue", "green", "red"]


@needs_onnxruntime
@pytest.mark.slow
def test_onnx_verification_fails_loudly_on_a_mismatch(trained, tmp_path):
    net, _ = ImageClassifier.from_checkpoint(trained["ckpt"])
    export_onnx(net, tmp_path / "model.onnx", (3, 32, 32))
    with torch.no_grad():
        net.head.fc.bias += 0.5  # the PyTorch model no longer matches the ONNX file
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ExportError, match="ONNX verification failed"):
        verify_onnx(net, tmp_path / "model.onnx", images)


def test_top_k_is_sorted_and_scores_sum_to_one_over_all_classes(trained):
    predictor = Predictor.from_pretrained(trained["export"], device="cpu")
    path = sorted((trained["root"] / "test" / "red").iterdir())[0]
    everything = predictor(str(path), top_k=None)
    assert sorted(p["label"] for p in everything) == ["blue", "green", "red"]
    scores = [p["score"] for p in everything]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-6)
    assert predictor(str(path), top_k=2) == everything[:2]
    # the probabilities are the softmax of the checkpoint's logits on eval.py's preprocessing
    module, _ = ImageClassifier.from_checkpoint(trained["ckpt"])
    with torch.inference_mode():
        expected = module(
            build_eval_transform({**module.data_config, "crop_pct": 1.0})(load_rgb(path))[None]
        ).softmax(-1)[0]
    assert {p["label"]: p["score"] for p in everything} == pytest.approx(
        dict(zip(module.class_names, expected.tolist(), strict=True)), abs=1e-6
    )


def test_paths_pil_images_and_tensors_give_the_same_predictions(trained):
    predictor = Predictor.from_pretrained(trained["export"], device="cpu", num_workers=2)
    paths = sorted(str(p) for p in (trained["root"] / "test").rglob("*.png"))
    from_paths = predictor.predict_proba(paths, batch_size=4)  # 24 files, 6 batches: decoded in 2 workers
    images = [load_rgb(p) for p in paths]
    torch.testing.assert_close(predictor.predict_proba(images, batch_size=5), from_paths, rtol=0, atol=1e-6)
    tensors = torch.stack([pil_to_tensor(image) for image in images])  # uint8 (N, 3, H, W)
    torch.testing.assert_close(predictor.predict_proba(tensors), from_paths, rtol=0, atol=1e-6)
    torch.testing.assert_close(predictor.predict_proba(tensors.float() / 255), from_paths, rtol=0, atol=1e-5)
    single = predictor(images[0], top_k=3)
    assert single == predictor([paths[0]], top_k=3)[0]
    assert len(predictor(paths[:3], top_k=1)) == 3


def odd_folder(root, rng):
    """Readable images in odd modes plus a corrupt image, a text file and a missing path."""
    write_image(root / "red" / "rgb.png", rng, colour=COLOURS["red"])
    write_image(root / "red" / "nested" / "cmyk.jpg", rng, mode="CMYK", colour=COLOURS["red"])
    Image.fromarray((np.arange(32 * 32, dtype=np.uint16) * 60).reshape(32, 32)).save(root / "blue_16bit.png")
    (root / "blue").mkdir()
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 30, 30, 220] + [0] * 762)
    palette.save(root / "blue" / "palette.gif", transparency=0)
    (root / "green").mkdir()
    (root / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image\n")
    return root


def test_cli_reports_unreadable_files_and_keeps_going(trained, tmp_path):
    folder = odd_folder(tmp_path / "odd", np.random.default_rng(0))
    output = tmp_path / "preds.csv"
    result = run_module(
        "vitcls.cli.predict",
        str(trained["export"]),
        str(folder),
        str(tmp_path / "missing.jpg"),
        "--output",
        str(output),
        "--top-k",
        "2",
        "--batch-size",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as handle:
        rows = {row["path"].replace(str(tmp_path) + "/", ""): row for row in csv.DictReader(handle)}
    assert set(rows) == {
        "odd/red/rgb.png",
        "odd/red/nested/cmyk.jpg",
        "odd/blue_16bit.png",
        "odd/blue/palette.gif",
        "odd/green/broken.jpg",
        "odd/notes.txt",
        "missing.jpg",
    }
    for name in ("odd/green/broken.jpg", "odd/notes.txt", "missing.jpg"):
        assert rows[name]["error"] and not rows[name]["label"], name
    assert "missing" in rows["missing.jpg"]["error"]
    for name in ("odd/red/rgb.png", "odd/red/nested/cmyk.jpg", "odd/blue_16bit.png", "odd/blue/palette.gif"):
        row = rows[name]
        assert not row["error"] and row["label"] in CLASSES and row["label_2"] in CLASSES, name
        assert float(row["score"]) >= float(row["score_2"])
    assert "7 files, 4 predicted, 3 unreadable" in result.stderr

    jsonl = tmp_path / "preds.jsonl"
    result = run_module(
        "vitcls.cli.predict", str(trained["export"]), str(folder / "**" / "*.png"), "--output", str(jsonl)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(line["path"] for line in lines) == sorted(str(p) for p in folder.rglob("*.png"))
    assert all(len(line["predictions"]) == 3 and line["error"] is None for line in lines)  # top-k capped at 3


@pytest.mark.slow
def test_cli_folder_metrics_equal_eval_py(trained, tmp_path):
    eval_dir = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "eval.py"),
            f"ckpt_path={trained['ckpt']}",
            f"hydra.run.dir={eval_dir}",
            "trainer=cpu",
            "data.num_workers=0",
            "gallery.num_images=2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((eval_dir / "eval.json").read_text())

    output = tmp_path / "predict" / "preds.csv"
    result = run_module(
        "vitcls.cli.predict",
        str(trained["export"]),
        str(trained["root"] / "test"),
        "--output",
        str(output),
        "--labels-from-folders",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output.parent / "metrics.json").read_text())
    assert metrics["num_samples"] == report["num_samples"] == 24
    for name in METRICS:
        assert metrics["test"][name] == pytest.approx(report["test"][name], abs=1e-6), name
    assert metrics["per_class"] == report["per_class"]
    # both in this machine's precision: bf16 autocast with AMX, float32 elsewhere
    assert report["precision"]["dtype"] == metrics["dtype"] == ("bfloat16" if cpu_has_amx_bf16() else "float32")
    assert (output.parent / "confusion_matrix.csv").read_text() == (
        eval_dir / "test_confusion_matrix.csv"
    ).read_text()
    assert (output.parent / "confusion_matrix.png").is_file()
    with open(output) as handle:
        rows = list(csv.DictReader(handle))
    accuracy = np.mean([int(row["correct"]) for row in rows])
    assert metrics["test"]["acc"] == pytest.approx(accuracy)
    assert {row["true_label"] for row in rows} == set(CLASSES)


def test_cli_refuses_folders_that_are_not_classes_of_the_model(trained, tmp_path):
    make_image_folder(tmp_path / "other", {"red": 1, "purple": 1})
    result = run_module(
        "vitcls.cli.predict",
        str(trained["export"]),
        str(tmp_path / "other"),
        "--labels-from-folders",
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert result.returncode == 2
    assert "['purple'] are not classes of the model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_export_cli_refuses_to_overwrite_a_foreign_directory(trained, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    result = run_module("vitcls.cli.export", trained["ckpt"], str(tmp_path / "precious"))
    assert result.returncode == 2 and "is not a vitcls export" in result.stderr
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
    result = run_module("vitcls.cli.export", trained["ckpt"], str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "again" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging debris


@pytest.mark.slow
def test_every_file_of_a_run_and_of_its_exports_has_the_mode_of_a_plain_write(tmp_path):
    """Under umask 027 (a group that shares results): files 0640 and folders 0750, as a plain open() and mkdir()
    give, whether written atomically through a temporary file (summary, model.safetensors...) or not."""
    root = tmp_path / "images"
    for split in ("train", "test"):
        make_image_folder(root, CLASSES, split, colours=COLOURS, seed=1 if split == "test" else 0)
    run_dir, second_export = tmp_path / "run", tmp_path / "exported"
    with_umask_027 = {"preexec_fn": lambda: os.umask(0o027)}
    trained = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), f"data.root={root}", f"hydra.run.dir={run_dir}",
         *FAST_OVERRIDES, "trainer.max_epochs=1", "export.enabled=true"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, **with_umask_027,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = json.loads((run_dir / "summary.json").read_text())["best_ckpt"]
    exported = subprocess.run(
        [sys.executable, "-m", "vitcls.cli.export", best, str(second_export)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, **with_umask_027,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (run_dir / "export" / "model.safetensors").is_file() and (second_export / "model.safetensors").is_file()
    for top in (run_dir, second_export):
        for path in [top, *top.rglob("*")]:
            expected = 0o750 if path.is_dir() else 0o640
            assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
