"""Decoding one image file into an RGB PIL image, whatever its mode or orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# Transparent pixels are composited onto white: photos cut out on a transparent background
# (common in product shots) would otherwise turn into black silhouettes.
_BACKGROUND = (255, 255, 255)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float single-channel images to 0..255 instead of clipping them."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = array / 257.0
    else:  # "I" or "F": no fixed range, stretch what is there
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, YCbCr...) to RGB."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_bit_depth_to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file, apply its EXIF orientation, and return it as a fully decoded RGB image."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # returns a copy, so the file can close
        image.load()
        return to_rgb(image)
