"""Score a checkpoint on the test split: `python eval.py ckpt_path=<run_dir>/checkpoints/<best>.ckpt`."""

from vitcls.cli.eval import main

if __name__ == "__main__":
    main()
