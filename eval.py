"""Score a checkpoint on the test split: `python eval.py ckpt_path=<run_dir>/checkpoints/<best>.ckpt`."""

from vitcls.cli import evaluate

if __name__ == "__main__":
    evaluate()
