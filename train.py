"""Fine-tune a timm ViT with a pluggable head on an image folder: `python train.py --help`."""

from vitcls.cli.train import main

if __name__ == "__main__":
    main()
