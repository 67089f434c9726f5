"""A generated "messy" image folder with one of each kind of bad file vitcls must detect."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import make_image_folder, write_image
from PIL import Image


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def make_messy_folder(root: Path, class_in_one_split: bool = False) -> dict[str, Path]:
    """train/{a,b,c}, test/{a,b,c}: a and b hold good images, c is empty in both splits.

    Returns the bad things by kind. train/a holds the five bad files; test/a holds a copy of a train
    image (leakage) and train/a a duplicate within train.
    """
    make_image_folder(root, {"a": 8, "b": 8}, "train", seed=1)
    make_image_folder(root, {"a": 3, "b": 3}, "test", seed=2)
    train_a = root / "train" / "a"
    rng = np.random.default_rng(3)
    bad = {}
    bad["zero_byte"] = train_a / "zero.jpg"
    bad["zero_byte"].write_bytes(b"")
    truncated = write_image(train_a / "truncated.jpg", rng, size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:300])
    bad["truncated"] = truncated
    bad["random_bytes"] = train_a / "noise.png"
    bad["random_bytes"].write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    bad["bomb"] = png_with_header_size(train_a / "bomb.png", 10_000, 10_000)
    outside = write_image(root.parent / f"{root.name}_outside" / "elsewhere.png", rng)
    bad["outside_symlink"] = train_a / "link.png"
    os.symlink(outside, bad["outside_symlink"])
    bad["non_image"] = train_a / "notes.txt"
    bad["non_image"].write_text("not an image")
    bad["duplicate_in_train"] = train_a / "copy.png"
    shutil.copy(train_a / "img_001.png", bad["duplicate_in_train"])
    bad["leak"] = root / "test" / "a" / "leak.png"
    shutil.copy(train_a / "img_000.png", bad["leak"])
    # a symlink that stays inside the root is fine
    os.symlink(write_image(root / "shared" / "pic.png", rng), root / "train" / "b" / "inside_link.png")
    # a PNG named .jpg decodes by content: a good image
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
        root / "train" / "b" / "really_png.jpg", format="PNG"
    )
    for split in ("train", "test"):
        (root / split / "c").mkdir()
    bad["empty_class"] = root / "train" / "c"
    if class_in_one_split:
        make_image_folder(root, {"d": 2}, "test", seed=4)
    return bad


BAD_FILE_KINDS = ("zero_byte", "truncated", "random_bytes", "bomb", "outside_symlink")
