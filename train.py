"""Fine-tune a timm ViT with a pluggable head on an image folder: `python train.py --help`."""

from vitcls.cli import train

if __name__ == "__main__":
    train()
