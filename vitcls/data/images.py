"""Decoding one image file into an RGB PIL image, whatever its mode or orientation.

Image files are untrusted input: anything that goes wrong while reading one (unknown format,
truncated stream, absurd header, too many pixels) becomes a `BadImageError` naming the file and
the reason, never another exception type or a decoder exhausting memory.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vitcls.errors import VitclsError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# Transparent pixels are composited onto white: photos cut out on a transparent background
# (common in product shots) would otherwise turn into black silhouettes.
_BACKGROUND = (255, 255, 255)

# PIL's own default (about 89 M pixels, e.g. 9500 x 9500): far above any photo a ViT needs, far below
# what a crafted header can claim. Checked from the header, before a single pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


class BadImageError(VitclsError):
    """An image file cannot be used; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str  # the mode stored in the file, before conversion to RGB


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


def _decode(path: str | Path, data: bytes | None, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    source = io.BytesIO(data) if data is not None else path
    with warnings.catch_warnings():
        # Our own cap below replaces PIL's DecompressionBombWarning (PIL still raises above twice its limit).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadImageError(
                    path, f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
                    "(data.max_image_pixels); a decompression bomb or an image far larger than training needs"
                )
            info = ImageInfo(width, height, image.mode)
            image = ImageOps.exif_transpose(image)  # returns a copy, so the file can close
            image.load()
            return image, info


def decode_image(path: str | Path, data: bytes | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Image.Image, ImageInfo]:
    """Fully decode an image file (or its `data`, read from `path` already) into RGB.

    Returns the RGB image and what the file holds; raises BadImageError for anything unusable.
    """
    if data is None and not Path(path).is_file():
        raise BadImageError(path, "file is missing or not a regular file")
    if (len(data) if data is not None else Path(path).stat().st_size) == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        image, info = _decode(path, data, max_pixels)
        return to_rgb(image), info
    except BadImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own hard limit, twice Image.MAX_IMAGE_PIXELS
        raise BadImageError(path, f"too many pixels, a decompression bomb ({error})") from error
    # Decoders fed crafted bytes raise many exception types (OSError, ValueError, SyntaxError,
    # struct.error, EOFError, MemoryError...): all of them mean "this file is unusable".
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise BadImageError(path, f"cannot decode ({type(error).__name__}: {reason})") from error


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file, apply its EXIF orientation, and return it as a fully decoded RGB image."""
    return decode_image(path, max_pixels=max_pixels)[0]
