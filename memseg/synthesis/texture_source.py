"""Texture anomaly sources: DTD images, or procedural textures when a config chooses them.

The paper (and TooTouch) paste a random image of the Describable Textures Dataset (``dtd/images/
<class>/*.jpg``), resized to the image size, with no colour augmentation. :class:`DTDTextureSource`
does that, decoding lazily and keeping resized images in a bounded in-memory LRU because JPEG
decoding is the cost. :class:`ProceduralTextureSource` makes varied colour textures from nothing
(fractal noise, warped stripes, checkers, ripples, each colour-mapped with a random palette), so
generated-data runs and tests need no download. ``data.texture_source`` chooses one;
:func:`create_texture_source` builds it and :func:`check_texture_source` refuses a DTD choice
without DTD images, so procedural textures never stand in for DTD unless asked for (see
docs/model.md, "Anomaly synthesis").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from memseg.config import DataConfig, TextureSourceName
from memseg.errors import ConfigError, DatasetLayoutError, ImageReadError
from memseg.synthesis.perlin import perlin_noise

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_HOW_TO_GET_DTD = (
    "get DTD with `memseg data download dtd --to DIR` and set data.dtd_root to the folder it prints "
    "(the one holding images/<class>/*.jpg), or choose generated textures explicitly with "
    "data.texture_source=procedural (not the paper's anomaly distribution)"
)


@runtime_checkable
class TextureSource(Protocol):
    """Anything that can hand out a texture image for the texture anomaly source."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random texture, uint8 ``(size, size, 3)`` RGB, chosen with ``rng`` only."""
        ...


class DTDTextureSource:
    """Random images of the Describable Textures Dataset, resized to the requested size.

    Args:
        root: DTD root holding ``images/<class>/*.jpg`` (the folder the official archive unpacks to).
        cache_size: Resized images kept in memory (LRU); None keeps all. At 256 px one image is
            192 KiB, so the default holds about 100 MiB per process.

    Raises:
        DatasetLayoutError: naming ``<root>/images`` when it holds no ``<class>/*.jpg`` file.
    """

    def __init__(self, root: str | Path, cache_size: int | None = 512) -> None:
        self.root = Path(root).expanduser()
        images_dir = self.root / "images"
        files: list[Path] = []
        if images_dir.is_dir():
            files = sorted(
                p for p in images_dir.glob("*/*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()
            )
        if not files:
            raise DatasetLayoutError(
                str(images_dir),
                [f"{images_dir}: no DTD texture images found (expected images/<class>/*.jpg under {self.root})"],
            )
        self.files: list[Path] = files
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A uniformly drawn DTD image, uint8 ``(size, size, 3)`` RGB."""
        return self.load(int(rng.integers(len(self.files))), size)

    def load(self, index: int, size: int) -> np.ndarray:
        """The ``index``-th file (sorted order), decoded, RGB and resized; served from the cache when there."""
        key = (index, size)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        path = self.files[index]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            msg = f"{path}: cannot decode texture image"
            raise ImageReadError(msg)
        h, w = bgr.shape[:2]
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False  # shared with later callers through the cache
        if self.cache_size is None or self.cache_size > 0:
            self._cache[key] = rgb
            if self.cache_size is not None and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return rgb


@lru_cache(maxsize=16)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1), ``(size, size)`` float32 each (y, x)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


class ProceduralTextureSource:
    """Colour textures generated on the fly, no files needed.

    Each sample draws a pattern (fractal noise, stripes, checker, ripples), a Perlin warp of its
    coordinates, a fine-noise overlay, and a 2-4 colour random palette. Everything is a whole-array
    numpy/OpenCV expression of a few cached coordinate grids, so a 256 px texture costs about a
    millisecond.
    """

    def __init__(self) -> None:
        self._patterns: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
            self._fractal,
            self._stripes,
            self._checker,
            self._ripples,
        )

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random texture, uint8 ``(size, size, 3)`` RGB."""
        pattern = self._patterns[int(rng.integers(len(self._patterns)))]
        field = pattern(rng, size)
        # Fine grain on top, so flat areas of the regular patterns still carry texture.
        grain_res = min(size, 2 ** int(rng.integers(4, 7)))
        grain = perlin_noise(rng, (size, size), (grain_res, grain_res))
        field = field + np.float32(rng.uniform(0.0, 0.25)) * grain
        lo, hi = float(field.min()), float(field.max())
        scaled = (field - lo) * np.float32(255.0 / max(hi - lo, 1e-6))
        levels = scaled.astype(np.uint8)
        return cv2.LUT(cv2.merge([levels, levels, levels]), _palette(rng))

    @staticmethod
    def _warped_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        y, x = _unit_grid(size)
        res = min(size, 2 ** int(rng.integers(1, 4)))
        amp = np.float32(rng.uniform(0.0, 0.15))
        warp_y = perlin_noise(rng, (size, size), (res, res))
        warp_x = perlin_noise(rng, (size, size), (res, res))
        return y + amp * warp_y, x + amp * warp_x

    @staticmethod
    def _rotated(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = rng.uniform(0.0, math.pi)
        c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        return c * x + s * y, c * y - s * x

    def _fractal(self, rng: np.random.Generator, size: int) -> np.ndarray:
        base = int(rng.integers(1, 4))
        octaves = int(rng.integers(2, 5))
        persistence = np.float32(rng.uniform(0.35, 0.7))
        field = np.zeros((size, size), dtype=np.float32)
        amp = np.float32(1.0)
        for k in range(octaves):
            res = min(size, 2 ** (base + k))
            field += amp * perlin_noise(rng, (size, size), (res, res))
            amp *= persistence
        if rng.random() < 0.5:  # "turbulence": creases instead of blobs
            field = np.abs(field)
        return field

    def _stripes(self, rng: np.random.Generator, size: int) -> np.ndarray:
        y, x = self._warped_grid(rng, size)
        u, _ = self._rotated(rng, y, x)
        freq = np.float32(rng.uniform(2.0, 24.0) * 2.0 * math.pi)
        return np.sin(freq * u + np.float32(rng.uniform(0.0, 2.0 * math.pi)))

    def _checker(self, rng: np.random.Generator, size: int) -> np.ndarray:
        y, x = self._warped_grid(rng, size)
        u, v = self._rotated(rng, y, x)
        fu, fv = (np.float32(f * 2.0 * math.pi) for f in rng.uniform(2.0, 16.0, size=2))
        return np.tanh(np.float32(rng.uniform(1.0, 8.0)) * np.sin(fu * u) * np.sin(fv * v))

    def _ripples(self, rng: np.random.Generator, size: int) -> np.ndarray:
        y, x = self._warped_grid(rng, size)
        cy, cx = rng.uniform(-0.25, 1.25, size=2).astype(np.float32)
        radius = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        freq = np.float32(rng.uniform(3.0, 30.0) * 2.0 * math.pi)
        return np.sin(freq * radius + np.float32(rng.uniform(0.0, 2.0 * math.pi)))


def _palette(rng: np.random.Generator) -> np.ndarray:
    """A ``(256, 1, 3)`` uint8 lookup table through 2-4 random colours (for ``cv2.LUT``)."""
    n = int(rng.integers(2, 5))
    stops = np.sort(rng.uniform(0.0, 255.0, size=n))
    stops[0], stops[-1] = 0.0, 255.0
    colours = rng.integers(0, 256, size=(n, 3)).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    lut = np.stack([np.interp(levels, stops, colours[:, c]) for c in range(3)], axis=1)
    return np.rint(lut).astype(np.uint8).reshape(256, 1, 3)


def create_texture_source(source: TextureSourceName, dtd_root: str | Path | None = None) -> TextureSource:
    """The texture source ``data.texture_source`` names: ``dtd`` (images under ``dtd_root``) or ``procedural``.

    Raises:
        ConfigError: ``dtd`` without a ``dtd_root`` or with one that holds no DTD images (naming
            ``data.dtd_root`` and how to get DTD).
    """
    if source == "procedural":
        return ProceduralTextureSource()
    if dtd_root is None or str(dtd_root) == "":
        msg = (
            "data.dtd_root: not set, and data.texture_source is 'dtd' (the default, the paper's source); "
            f"{_HOW_TO_GET_DTD}"
        )
        raise ConfigError(msg)
    try:
        return DTDTextureSource(dtd_root)
    except DatasetLayoutError as exc:
        msg = f"data.dtd_root: {dtd_root} holds no DTD images (expected images/<class>/*.jpg); {_HOW_TO_GET_DTD}"
        raise ConfigError(msg) from exc


def check_texture_source(data: DataConfig) -> None:
    """Refuse, before any training work, a config whose texture source cannot be built.

    Raises:
        ConfigError: as :func:`create_texture_source`.
    """
    create_texture_source(data.texture_source, data.dtd_root)
