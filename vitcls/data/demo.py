"""SYNTHETIC demo data: a small, procedurally drawn "fruit shapes" image folder for the offline quickstart.

Nothing here is a real photograph. Every image is drawn from scratch with PIL + numpy: a simple fruit-like
shape (apple, banana, grape, lemon, orange, strawberry) with a distinct shape and colour cue, on a random
background (solid colour, linear gradient, mild noise), at a random scale, position and slight rotation,
with mild per-image colour jitter. The task is easy to learn but not trivial, and needs no download.

Layout written by :meth:`SyntheticFruitShapes.prepare` (the standard ``train/``/``test/`` folder layout)::

    ROOT/train/<class>/<class>_0000.jpg ...   (every 5th image is a .png, the rest JPEG q90)
    ROOT/test/<class>/...
    ROOT/.vitcls-demo.json                    (marker with the generator arguments; hidden on purpose)

Generation is fully deterministic: each image has its own numpy Generator seeded from
(seed, split, class index, image index), so the same arguments give byte-identical files in any process.
The folder is generated once into a hidden sibling temp folder and renamed into place, so concurrent
processes (e.g. DDP ranks) never see a half-written folder; later calls with the same arguments are no-ops.

Command line::

    vitcls-data demo ROOT [--train-per-class N] [--test-per-class N] [--image-size S] [--seed K]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vitcls.errors import ConfigError

MARKER_NAME = ".vitcls-demo.json"
GENERATOR_NAME = "vitcls.data.demo.SyntheticFruitShapes"
# Bump when the drawing code changes so that stale cached folders are not mistaken for current ones.
GENERATOR_VERSION = 1

SPLITS = ("train", "test")
_SPLIT_IDS = {"train": 0, "test": 1}
_PNG_EVERY = 5  # every 5th image (staggered by class index) is saved as PNG, the rest as JPEG
_JPEG_QUALITY = 90
_SUPERSAMPLE = 2  # draw at 2x the output size, then downsample with LANCZOS (anti-aliasing)

Color = tuple[int, int, int]
Point = tuple[float, float]


# --------------------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------------------


class _Palette:
    """Per-image colour jitter: a global brightness factor plus a small per-channel shift for every colour."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.brightness = float(rng.uniform(0.85, 1.15))
        self.shift = rng.uniform(-14.0, 14.0, size=3)

    def __call__(
        self, color: Sequence[float], spread: float = 0.0, alpha: int = 255
    ) -> tuple[int, int, int, int]:
        value = np.asarray(color, dtype=np.float64) * self.brightness + self.shift
        if spread:
            value = value + self.rng.uniform(-spread, spread, size=3)
        r, g, b = (int(v) for v in np.clip(np.rint(value), 0, 255))
        return (r, g, b, alpha)


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _polygon(
    cx: float, cy: float, shape: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n: int = 72
) -> list[Point]:
    """Closed polygon from a parametric outline ``shape(u) -> (x, y)`` with u in [0, 2pi), offset by (cx, cy)."""
    u = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x, y = shape(u)
    return [(float(cx + a), float(cy + b)) for a, b in zip(x, y, strict=True)]


def _leaf(cx: float, cy: float, length: float, width: float, angle: float) -> list[Point]:
    """A pointed leaf (lens shape) starting at (cx, cy) and pointing along ``angle`` (radians)."""
    t = np.linspace(0.0, 1.0, 12)
    half = width / 2.0 * np.sin(np.pi * t)
    along = np.concatenate([t, t[::-1]]) * length
    across = np.concatenate([half, -half[::-1]])
    ca, sa = math.cos(angle), math.sin(angle)
    return [
        (float(cx + a * ca - b * sa), float(cy + a * sa + b * ca)) for a, b in zip(along, across, strict=True)
    ]


def _highlight(layer: Image.Image, cx: float, cy: float, rx: float, ry: float, alpha: int) -> None:
    """A soft-ish light spot blended over what is already drawn (keeps the layer's alpha)."""
    spot = Image.new("RGBA", layer.size, (255, 255, 255, 0))
    ImageDraw.Draw(spot).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(255, 255, 255, alpha))
    mask = layer.getchannel("A")
    blended = Image.alpha_composite(layer, spot)
    blended.putalpha(mask)
    layer.paste(blended)


# --------------------------------------------------------------------------------------------------------
# The fruits. Each draws onto a transparent RGBA layer, centred on (cx, cy) with overall size d (pixels).
# --------------------------------------------------------------------------------------------------------


def _draw_apple(layer: Image.Image, cx: float, cy: float, d: float, pal: _Palette, rng) -> None:
    draw = ImageDraw.Draw(layer)
    red = pal((200, 28, 36))
    r = 0.36 * d
    body_y = cy + 0.06 * d
    # two overlapping lobes + a lower circle: round body with a slight dip at the top
    _circle(draw, cx - 0.11 * d, body_y - 0.04 * d, r, red)
    _circle(draw, cx + 0.11 * d, body_y - 0.04 * d, r, red)
    _circle(draw, cx, body_y + 0.06 * d, 0.38 * d, red)
    _highlight(layer, cx - 0.17 * d, body_y - 0.12 * d, 0.08 * d, 0.12 * d, 70)
    draw = ImageDraw.Draw(layer)
    top = body_y - 0.04 * d - r + 0.06 * d
    stem_w = max(2.0, 0.05 * d)
    draw.line(
        [(cx, top + 0.04 * d), (cx + 0.04 * d, top - 0.16 * d)], fill=pal((110, 62, 25)), width=round(stem_w)
    )
    leaf_angle = -math.radians(float(rng.uniform(15.0, 45.0)))
    draw.polygon(
        _leaf(cx + 0.03 * d, top - 0.08 * d, 0.26 * d, 0.12 * d, leaf_angle), fill=pal((60, 150, 45))
    )


def _draw_banana(layer: Image.Image, cx: float, cy: float, d: float, pal: _Palette, rng) -> None:
    draw = ImageDraw.Draw(layer)
    yellow = pal((236, 196, 44))
    outer_r = 0.5 * d
    oy = cy - 0.1 * d
    inner_offset = 0.36 * d
    # crescent = outer disc minus an upward-shifted disc (drawn as transparent: ImageDraw overwrites)
    _circle(draw, cx, oy, outer_r, yellow)
    _circle(draw, cx, oy - inner_offset, outer_r * 1.02, (0, 0, 0, 0))
    # light stripe along the lower edge for a bit of shading
    _highlight(layer, cx, oy + 0.42 * d, 0.3 * d, 0.04 * d, 55)
    draw = ImageDraw.Draw(layer)
    # brown tips at the two horns
    horn_y = oy - inner_offset / 2.0
    horn_dx = math.sqrt(max(outer_r**2 - (inner_offset / 2.0) ** 2, 0.0))
    tip = pal((95, 60, 25))
    _circle(draw, cx - horn_dx + 0.03 * d, horn_y + 0.02 * d, 0.035 * d, tip)
    draw.line(
        [(cx + horn_dx - 0.04 * d, horn_y + 0.03 * d), (cx + horn_dx + 0.03 * d, horn_y - 0.06 * d)],
        fill=pal((120, 140, 40)),
        width=max(2, round(0.05 * d)),
    )


def _draw_grape(layer: Image.Image, cx: float, cy: float, d: float, pal: _Palette, rng) -> None:
    draw = ImageDraw.Draw(layer)
    rows = (4, 4, 3, 3, 2, 1)
    r = 0.1 * d
    step_x = 1.7 * r
    step_y = 1.5 * r
    top = cy - (len(rows) - 1) * step_y / 2.0 + 0.04 * d
    draw.line(
        [(cx, top - 0.1 * d), (cx + 0.05 * d, top - 0.3 * d)],
        fill=pal((100, 70, 35)),
        width=max(2, round(0.045 * d)),
    )
    for i, count in enumerate(rows):
        y = top + i * step_y
        for j in range(count):
            x = cx + (j - (count - 1) / 2.0) * step_x
            jx, jy = rng.uniform(-0.15, 0.15, size=2) * r
            gx, gy = x + jx, y + jy
            _circle(draw, gx, gy, r, pal((112, 40, 128), spread=14.0))
            _circle(draw, gx - 0.35 * r, gy - 0.35 * r, 0.28 * r, pal((170, 110, 185), alpha=255))


def _draw_lemon(layer: Image.Image, cx: float, cy: float, d: float, pal: _Palette, rng) -> None:
    draw = ImageDraw.Draw(layer)
    rx, ry = 0.4 * d, 0.28 * d

    def outline(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.cos(u)
        # the |cos|^12 term pulls out a narrow nub at each end, where sin(u) (the height) is small
        return rx * c * (1.0 + 0.22 * np.abs(c) ** 12), ry * np.sin(u)

    draw.polygon(_polygon(cx, cy, outline, n=96), fill=pal((246, 234, 70)))
    _highlight(layer, cx - 0.12 * d, cy - 0.1 * d, 0.14 * d, 0.06 * d, 80)
    draw = ImageDraw.Draw(layer)
    _circle(draw, cx + rx * 1.2, cy, 0.022 * d, pal((150, 160, 50)))


def _draw_orange(layer: Image.Image, cx: float, cy: float, d: float, pal: _Palette, rng) -> None:
    draw = ImageDraw.Draw(layer)
    r = 0.45 * d
    _circle(draw, cx, cy, r, pal((244, 138, 22)))
    # dimpled peel: many small slightly darker / lighter dots
    n = 70
    ang = rng.uniform(0.0, 2.0 * math.pi, n)
    rad = r * 0.9 * np.sqrt(rng.uniform(0.0, 1.0, n))
    dot_r = max(1.0, 0.018 * d)
    for k in range(n):
        shade = (214, 110, 12) if k % 2 else (252, 170, 60)
        _circle(draw, cx + rad[k] * math.cos(ang[k]), cy + rad[k] * math.sin(ang[k]), dot_r, pal(shade))
    _highlight(layer, cx - 0.16 * d, cy - 0.16 * d, 0.1 * d, 0.08 * d, 70)
    draw = ImageDraw.Draw(layer)
    _circle(draw, cx + 0.04 * d, cy - r + 0.05 * d, 0.035 * d, pal((80, 110, 30)))


def _draw_strawberry(layer: Image.Image, cx: float, cy: float, d: float, pal: _Palette, rng) -> None:
    draw = ImageDraw.Draw(layer)
    w = 0.42 * d
    body_cy = cy - 0.02 * d

    def outline(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.cos(u), np.sin(u)
        lower = y > 0
        # flat-ish top, narrowing to a rounded point at the bottom
        xs = np.where(lower, x * (1.0 - 0.6 * y), x)
        ys = np.where(lower, y * 0.58, y * 0.22)
        return w * xs, d * ys

    draw.polygon(_polygon(cx, body_cy, outline, n=96), fill=pal((214, 30, 48)))
    # yellow seeds on a jittered grid inside the body
    seed = pal((248, 222, 90))
    seed_r = max(1.0, 0.017 * d)
    for gy in np.linspace(0.05, 0.45, 5):
        half = w * (1.0 - 0.6 * (gy / 0.58)) * math.sqrt(max(0.0, 1.0 - (gy / 0.58) ** 2)) * 0.75
        count = max(1, round(2 * half / (0.12 * d)))
        for gx in np.linspace(-half, half, count):
            jx, jy = rng.uniform(-0.015, 0.015, size=2) * d
            _circle(draw, cx + gx + jx, body_cy + gy * d + jy, seed_r, seed)
    # green calyx: leaves radiating from the top centre
    green = pal((40, 140, 50))
    top_y = body_cy - 0.2 * d
    for k in range(5):
        angle = math.pi + (k + 0.5) * math.pi / 5.0 + float(rng.uniform(-0.15, 0.15))
        draw.polygon(_leaf(cx, top_y + 0.04 * d, 0.24 * d, 0.09 * d, -angle + math.pi), fill=green)
    draw.line([(cx, top_y), (cx + 0.02 * d, top_y - 0.12 * d)], fill=green, width=max(2, round(0.04 * d)))


_FRUITS: dict[str, Callable[..., None]] = {
    "apple": _draw_apple,
    "banana": _draw_banana,
    "grape": _draw_grape,
    "lemon": _draw_lemon,
    "orange": _draw_orange,
    "strawberry": _draw_strawberry,
}
CLASS_NAMES = tuple(sorted(_FRUITS))  # sorted, so folder-scan label indices match class indices here


# --------------------------------------------------------------------------------------------------------
# Backgrounds and one image
# --------------------------------------------------------------------------------------------------------


def _background_color(rng: np.random.Generator) -> np.ndarray:
    color = rng.uniform(30.0, 235.0, size=3)
    grey = color.mean()
    return grey + (color - grey) * rng.uniform(0.25, 0.8)  # muted, so the fruit usually stands out


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    kind = int(rng.integers(0, 3))
    first = _background_color(rng)
    if kind == 0:  # solid colour
        array = np.broadcast_to(first, (size, size, 3))
    else:  # linear gradient in a random direction (kind 2: with stronger contrast)
        second = _background_color(rng) if kind == 1 else 255.0 - first * rng.uniform(0.6, 1.0)
        theta = rng.uniform(0.0, 2.0 * math.pi)
        coords = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
        t = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        array = first * (1.0 - t[..., None]) + second * t[..., None]
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="RGB").convert("RGBA")


def _render(class_name: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    big = image_size * _SUPERSAMPLE
    canvas = _background(big, rng)
    scale = float(rng.uniform(0.4, 0.9))
    d = scale * big
    slack = (big - d) / 2.0
    cx = big / 2.0 + float(rng.uniform(-1.0, 1.0)) * slack
    cy = big / 2.0 + float(rng.uniform(-1.0, 1.0)) * slack
    angle = float(rng.uniform(-20.0, 20.0))

    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    _FRUITS[class_name](layer, cx, cy, d, _Palette(rng), rng)
    # rotate premultiplied so that transparent pixels do not bleed dark fringes into the edges
    layer = (
        layer.convert("RGBa")
        .rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))
        .convert("RGBA")
    )
    canvas = Image.alpha_composite(canvas, layer).convert("RGB")

    image = canvas.resize((image_size, image_size), resample=Image.Resampling.LANCZOS)
    sigma = float(rng.uniform(0.0, 6.0))
    if sigma > 0.5:  # mild sensor-like noise
        noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, size=(image_size, image_size, 3))
        image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mode="RGB")
    return image


# --------------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------------


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SyntheticFruitShapes:
    """SYNTHETIC procedurally drawn fruit-shape images; writes ROOT/train/<class>/* and ROOT/test/<class>/* once.

    Not real data: for the offline quickstart and tests only. See the module docstring for details.
    """

    def __init__(
        self, train_per_class: int = 60, test_per_class: int = 20, image_size: int = 64, seed: int = 0
    ):
        self.train_per_class = _positive_int("train_per_class", train_per_class)
        self.test_per_class = _positive_int("test_per_class", test_per_class)
        self.image_size = _positive_int("image_size", image_size, minimum=8)
        self.seed = _positive_int("seed", seed, minimum=0)

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"

    def _arguments(self) -> dict[str, int]:
        return {
            "train_per_class": self.train_per_class,
            "test_per_class": self.test_per_class,
            "image_size": self.image_size,
            "seed": self.seed,
        }

    def _marker(self) -> dict:
        return {
            "generator": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "synthetic": True,
            "arguments": self._arguments(),
            "class_names": self.class_names,
        }

    def _per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.test_per_class

    def image(self, split: str, class_name: str, index: int) -> Image.Image:
        """Render one image (deterministic in seed, split, class and index)."""
        class_index = CLASS_NAMES.index(class_name)
        sequence = np.random.SeedSequence([self.seed, _SPLIT_IDS[split], class_index, index])
        return _render(class_name, self.image_size, np.random.default_rng(sequence))

    @staticmethod
    def file_name(class_name: str, index: int) -> str:
        # every 5th image is a PNG, staggered across classes so that even tiny folders get some
        extension = (
            ".png" if (index + CLASS_NAMES.index(class_name)) % _PNG_EVERY == _PNG_EVERY - 1 else ".jpg"
        )
        return f"{class_name}_{index:04d}{extension}"

    def _read_marker(self, root: Path) -> dict | None:
        try:
            return json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _is_current(self, root: Path) -> bool:
        return self._read_marker(root) == self._marker()

    def _refuse(self, root: Path) -> ConfigError:
        marker = self._read_marker(root)
        if marker is None:
            what = "exists and is not empty, but holds no vitcls demo data (no " + MARKER_NAME + " marker)"
        else:
            what = f"holds vitcls demo data generated with different settings ({marker.get('arguments')})"
        return ConfigError(
            f"Demo data folder {str(root)!r} {what}; expected {self!r}. "
            "Delete that folder or choose another data.root (it is never deleted automatically)."
        )

    def _write(self, directory: Path) -> None:
        for split in SPLITS:
            for class_name in CLASS_NAMES:
                folder = directory / split / class_name
                folder.mkdir(parents=True)
                for index in range(self._per_class(split)):
                    image = self.image(split, class_name, index)
                    path = folder / self.file_name(class_name, index)
                    if path.suffix == ".png":
                        image.save(path, format="PNG")
                    else:
                        image.save(path, format="JPEG", quality=_JPEG_QUALITY)
        # the marker goes in last: a folder with a marker is a complete folder
        (directory / MARKER_NAME).write_text(json.dumps(self._marker(), indent=2) + "\n", encoding="utf-8")

    def prepare(self, root: str | os.PathLike) -> None:
        """Generate the folder at ``root`` unless it already holds this exact data set (then do nothing).

        Raises ValueError if ``root`` exists and is not empty but was not generated with these arguments;
        existing user data is never modified or deleted.
        """
        root = Path(os.fspath(root)).expanduser().resolve()
        if root.exists():
            if self._is_current(root):
                return
            if not root.is_dir() or any(root.iterdir()):
                raise self._refuse(root)
        root.parent.mkdir(parents=True, exist_ok=True)

        # Unique hidden sibling (pid + random suffix), so that concurrent processes or threads never share one.
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-{os.getpid()}-", dir=root.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700; the data folder should be readable like any other
            self._write(tmp)
            try:
                if root.is_dir() and not any(root.iterdir()):
                    root.rmdir()  # an empty target folder: replace it (os.replace onto a dir fails on Windows)
            except OSError:
                pass  # someone else may have just filled it; os.replace below sorts that out
            try:
                os.replace(tmp, root)
            except OSError:
                # Another process (e.g. another DDP rank) probably won the race; fine if it wrote the same thing.
                if self._is_current(root):
                    return
                if root.exists():
                    raise self._refuse(root) from None
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

