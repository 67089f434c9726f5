"""Hydra entry points (`python train.py`, `python eval.py`, and the vitcls-train/vitcls-eval scripts)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def train(cfg: DictConfig) -> float | None:
    from vitcls.train import run

    summary = run(cfg)
    # Returned to Hydra sweepers that optimise a value.
    return summary["test"].get("f1_macro")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def evaluate(cfg: DictConfig) -> float | None:
    from vitcls.evaluate import run

    return run(cfg)["test"].get("f1_macro")
