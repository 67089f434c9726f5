import numpy as np
import pytest
from PIL import Image

from vitcls.data.images import load_rgb


def rgb_of(path):
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "YCbCr", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
    path = tmp_path / f"x.{'tif' if mode in ('I', 'F', 'CMYK', 'YCbCr') else 'png'}"
    base.convert(mode).save(path)
    assert rgb_of(path).shape == (12, 16, 3)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(array).save(path)  # mode I;16
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(rgb_of(path)[0, :, 0], [0, 128, 255])


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = rgb_of(path)
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[3, 0], [255, 255, 255])


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.paste(1, (0, 0, 2, 4))
    path = tmp_path / "palette.gif"
    image.save(path, transparency=0)
    rgb = rgb_of(path)
    np.testing.assert_array_equal(rgb[0, 0], [10, 200, 30])
    np.testing.assert_array_equal(rgb[0, 3], [255, 255, 255])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif)
    assert Image.open(path).size == (30, 10)
    assert load_rgb(path).size == (10, 30)


@pytest.mark.parametrize("ext", ["jpg", "bmp", "webp", "gif", "tiff"])
def test_formats(tmp_path, ext):
    path = tmp_path / f"x.{ext}"
    Image.new("RGB", (9, 7), (200, 10, 10)).save(path)
    assert rgb_of(path).shape == (7, 9, 3)


def test_unreadable_file_error_names_the_file(tmp_path):
    from vitcls.data.dataset import ImageDecodeError, ImageFileDataset
    from vitcls.data.folder import Sample

    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not a png")
    dataset = ImageFileDataset([Sample(str(p), 0) for p in (good, truncated, garbage)])
    assert dataset[0][0].size == (4, 4)
    for index, path in ((1, truncated), (2, garbage)):
        with pytest.raises(ImageDecodeError, match=str(path)):
            dataset[index]
