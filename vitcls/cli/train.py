"""`vitcls-train` / `python train.py`: fine-tune a timm ViT with a pluggable head on an image folder."""

from __future__ import annotations

from omegaconf import DictConfig

from vitcls.cli.hydra_job import hydra_entry_point


def train(cfg: DictConfig) -> float | None:
    from vitcls.train import run

    # Hydra sweepers that optimise a value get the monitored validation score, never a test metric.
    return run(cfg)["best_val_score"]


def main() -> None:
    hydra_entry_point("train", train)()


if __name__ == "__main__":
    main()
