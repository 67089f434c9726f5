"""Fuzzing the image loader: the only outcomes allowed are a decoded RGB image or a BadImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messy_data import png_with_header_size
from PIL import Image

from vitcls.data.images import BadImageError, decode_image

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
EXTENSIONS = (".jpg", ".png", ".gif", ".bmp", ".webp", ".tif", ".jpeg")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encoded(fmt: str, seed: int = 0, size=(16, 12)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: encoded(fmt) for fmt in FORMATS}


def assert_rgb_or_bad(tmp_path, data: bytes, ext: str) -> str:
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(data)
    try:
        image, _ = decode_image(path)
    except BadImageError as error:
        assert error.path == str(path) and error.reason
        return "bad"
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    np.asarray(image)  # the pixels are really there
    return "rgb"


@FUZZ
@given(data=st.binary(min_size=0, max_size=512), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes(tmp_path, data, ext):
    assert_rgb_or_bad(tmp_path, data, ext)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), cut=st.floats(0.0, 0.99), ext=st.sampled_from(EXTENSIONS))
def test_truncated_streams_under_any_extension(tmp_path, fmt, cut, ext):
    data = VALID[fmt]
    assert_rgb_or_bad(tmp_path, data[: int(len(data) * cut)], ext)


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_corrupted_bytes(tmp_path, fmt, flips):
    data = bytearray(VALID[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    assert_rgb_or_bad(tmp_path, bytes(data), ".img.png")


@FUZZ
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_huge_dimensions_in_a_header_are_refused_before_decoding(tmp_path, width, height):
    path = png_with_header_size(tmp_path / "header.png", width, height)
    outcome = assert_rgb_or_bad(tmp_path, path.read_bytes(), ".png")
    if width * height > 89_478_485:
        assert outcome == "bad"


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_streams_under_a_wrong_extension_decode(tmp_path, fmt):
    assert assert_rgb_or_bad(tmp_path, VALID[fmt], ".png" if fmt != "PNG" else ".jpg") == "rgb"
