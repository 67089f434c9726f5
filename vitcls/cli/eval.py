"""`vitcls-eval` / `python eval.py ckpt_path=...`: score a checkpoint on the test split and write the reports."""

from __future__ import annotations

from omegaconf import DictConfig

from vitcls.cli.hydra_job import hydra_entry_point


def evaluate(cfg: DictConfig) -> float | None:
    from vitcls.run.evaluate import run

    return run(cfg)["test"].get("f1_macro")


def main() -> None:
    hydra_entry_point("eval", evaluate)()


if __name__ == "__main__":
    main()
