"""`vitcls-train` / `python train.py`: fine-tune a timm ViT with a pluggable head on an image folder."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vitcls.cli.hydra_job import hydra_entry_point


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """A lone run, or with `bank=<preset>` a head bank: the study is chosen here, the lifecycle is the same.
    Returns the run's summary."""
    from vitcls.config import import_modules
    from vitcls.run.lifecycle import run
    from vitcls.run.studies import study_of

    import_modules(list(cfg.get("imports") or []), "imports")
    return run(cfg, study_of(cfg))


def train(cfg: DictConfig) -> float | None:
    # Hydra sweepers that optimise a value get the monitored validation score, never a test metric.
    return run_training(cfg)["best_val_score"]


def main() -> None:
    hydra_entry_point("train", train)()


if __name__ == "__main__":
    main()
