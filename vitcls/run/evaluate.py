"""`run(cfg)`: score a checkpoint on the test split and write report, confusion matrix and gallery.

Everything lands in the eval run directory (`outputs/eval/runs/<date_time>/` unless hydra.run.dir says
otherwise): eval.json, report.md, report_per_class.csv, predictions.csv, test_confusion_matrix.png/.csv
and prediction_gallery.png.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from omegaconf import DictConfig

from vitcls.config import import_modules, to_plain
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.folder import DatasetLayoutError, class_differences
from vitcls.data.images import load_rgb
from vitcls.errors import ConfigError
from vitcls.io import write_json_atomic
from vitcls.metrics import ordered_metrics, per_class_report
from vitcls.models.lightning_module import ClassifierModule
from vitcls.precision import log_precision
from vitcls.reporting.plots import GalleryItem, save_confusion_matrix, save_prediction_gallery, save_report
from vitcls.reporting.predictions_csv import write_predictions

log = logging.getLogger(__name__)


def build_eval_datamodule(checkpoint: dict, overrides: dict[str, Any]) -> ImageFolderDataModule:
    """The training run's data settings (from the checkpoint), with the non-null overrides applied."""
    trained_with = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    kwargs = {**trained_with, **{k: v for k, v in overrides.items() if v is not None}}
    if not kwargs.get("root"):
        raise ConfigError("the checkpoint does not record its data folder: pass data.root=PATH")
    datamodule = ImageFolderDataModule(**kwargs)
    datamodule.scan()
    return datamodule


def check_same_classes(model_classes: list[str], data_classes: list[str], data_root: str) -> None:
    if model_classes != data_classes:
        missing, extra = class_differences(model_classes, data_classes)
        raise DatasetLayoutError(
            f"the checkpoint was trained on other classes than {data_root} holds: "
            f"classes of the model missing in the data: {missing or 'none'}; classes in the data unknown "
            f"to the model: {extra or 'none'}"
            + ("; same names in another order" if not missing and not extra else "")
        )


def pick_gallery(samples, probabilities: torch.Tensor, num_images: int, misclassified_share: float,
                 seed: int) -> list[int]:
    """Random test images, with up to `misclassified_share` of them misclassified when any are."""
    predicted = probabilities.argmax(dim=1).tolist()
    wrong = [i for i, s in enumerate(samples) if predicted[i] != s.label]
    right = [i for i, s in enumerate(samples) if predicted[i] == s.label]
    rng = random.Random(seed)
    n_wrong = min(len(wrong), round(num_images * misclassified_share))
    chosen = rng.sample(wrong, n_wrong)
    chosen += rng.sample(right, min(len(right), num_images - n_wrong))
    rng.shuffle(chosen)
    return chosen


def score(cfg: DictConfig) -> tuple[ClassifierModule, ImageFolderDataModule, dict[str, float], dict[str, str]]:
    """The checkpoint's test metrics on its run's test split (or the one `data.*` points to), and the
    precision they were computed in (the trainer preset of this machine unless trainer.precision says)."""
    import_modules(list(cfg.get("imports") or []), "imports")
    module, checkpoint = ClassifierModule.from_checkpoint(cfg.ckpt_path)
    if module.num_heads != 1:
        raise ConfigError(
            f"ckpt_path: {cfg.ckpt_path} holds {module.num_heads} heads (a head bank's training checkpoint): score the "
            "selected head with ckpt_path=<run_dir>/checkpoints/selected.ckpt, or export any head with "
            "vitcls-export <run_dir> OUT_DIR --bank-head NAME"
        )
    datamodule = build_eval_datamodule(checkpoint, to_plain(cfg.data))
    check_same_classes(module.class_names, datamodule.class_names, str(datamodule.root))
    datamodule.set_data_config(module.data_config)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], _convert_="all")
    precision = log_precision(trainer.precision, trainer.strategy.root_device.type)
    trainer.test(module, datamodule=datamodule, verbose=True)
    return module, datamodule, ordered_metrics(module.results["test"][0]), precision


def write_reports(cfg: DictConfig, module: ClassifierModule, datamodule: ImageFolderDataModule,
                  metrics: dict[str, float], output_dir: Path) -> dict[str, Any]:
    class_names = module.class_names
    confusion = module.confusion_matrices["test"][0]
    probabilities = module.head_predictions("test")
    skipped = datamodule.skipped_files()
    # Files that went bad during the test loop were dropped from their batch (data.on_bad_image=skip);
    # shorter than the split only when trainer.limit_test_batches cuts the test loop.
    samples = [s for s in datamodule.datasets["test"].samples if s.path not in skipped][: len(probabilities)]

    files = {f"confusion_matrix_{k}": v for k, v in save_confusion_matrix(
        confusion, class_names, output_dir, stem="test_confusion_matrix", title="test confusion matrix").items()}
    files.update({f"report_{k}": v for k, v in save_report(metrics, confusion, class_names, output_dir).items()})
    files["predictions_csv"] = write_predictions(output_dir / "predictions.csv", samples, probabilities, class_names)
    gallery = pick_gallery(samples, probabilities, cfg.gallery.num_images, cfg.gallery.misclassified_share, cfg.seed)
    files["gallery_png"] = save_prediction_gallery(
        [
            GalleryItem(load_rgb(samples[i].path), class_names[samples[i].label],
                        class_names[int(probabilities[i].argmax())], float(probabilities[i].max()))
            for i in gallery
        ],
        output_dir / "prediction_gallery.png",
        columns=cfg.gallery.columns,
        title="test predictions (red: misclassified)",
    )
    return {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "data_root": str(datamodule.root),
        "class_names": class_names,
        "num_samples": len(samples),
        "skipped_files": len(skipped),
        "skipped": skipped,
        "test": metrics,
        "per_class": per_class_report(confusion, class_names),
        "paths": {name: str(path) for name, path in files.items()},
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, datamodule, metrics, precision = score(cfg)
    report = {**write_reports(cfg, module, datamodule, metrics, output_dir), "precision": precision}
    write_json_atomic(output_dir / "eval.json", report)
    log.info("test metrics: %s", metrics)
    log.info("eval directory: %s", output_dir)
    return report
