"""`vitcls-train` / `python train.py`: fine-tune a timm ViT with a pluggable head on an image folder."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vitcls.cli.hydra_job import hydra_entry_point


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """A lone run, with `bank=<preset>` a head bank, with `suite=<name>` one dataset's job of a suite: chosen here,
    and each runs the same lifecycle. Returns the run's summary (a suite job: its record of cells)."""
    from vitcls.config import import_modules

    import_modules(list(cfg.get("imports") or []), "imports")
    if cfg.get("suite") is not None:
        from vitcls.suite.job import run_dataset

        return run_dataset(cfg)
    from vitcls.run.lifecycle import run
    from vitcls.run.studies import study_of

    return run(cfg, study_of(cfg))


def train(cfg: DictConfig) -> float | None:
    # Hydra sweepers that optimise a value get the monitored validation score, never a test metric.
    return run_training(cfg).get("best_val_score")


def main() -> None:
    hydra_entry_point("train", train)()


if __name__ == "__main__":
    main()
