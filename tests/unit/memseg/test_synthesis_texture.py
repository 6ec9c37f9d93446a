"""Texture sources: DTD folder, procedural textures, and the factory that data.texture_source drives."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from memseg.config import DataConfig
from memseg.errors import ConfigError, DatasetLayoutError, ImageReadError
from memseg.synthesis.texture_source import (
    DTDTextureSource,
    ProceduralTextureSource,
    TextureSource,
    check_texture_source,
    create_texture_source,
)

# RGB colours of the generated DTD images, one per file.
COLOURS = {
    ("banded", "banded_0001.jpg"): (255, 0, 0),
    ("banded", "banded_0002.jpg"): (0, 0, 255),
    ("dotted", "dotted_0001.jpg"): (0, 255, 0),
    ("dotted", "dotted_0002.jpg"): (250, 250, 250),
}


@pytest.fixture
def dtd_root(tmp_path: Path) -> Path:
    """A tiny DTD layout (images/<class>/*.jpg) of uniform-colour JPEGs of various sizes."""
    root = tmp_path / "dtd"
    for k, ((cls, name), rgb) in enumerate(COLOURS.items()):
        folder = root / "images" / cls
        folder.mkdir(parents=True, exist_ok=True)
        image = np.zeros((40 + 10 * k, 60, 3), dtype=np.uint8)
        image[:] = rgb[::-1]  # cv2 writes BGR
        assert cv2.imwrite(str(folder / name), image)
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("not an image\n")
    return root


def test_dtd_lists_files_and_samples_rgb_at_size(dtd_root: Path) -> None:
    source = DTDTextureSource(dtd_root)
    assert len(source) == 4
    assert isinstance(source, TextureSource)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        tex = source.sample(rng, 32)
        assert tex.shape == (32, 32, 3) and tex.dtype == np.uint8
        centre = tuple(int(v) for v in tex[16, 16])
        match = [c for c in COLOURS.values() if np.abs(np.subtract(c, centre)).max() <= 8]
        assert match, f"colour {centre} is not one of the files' colours (RGB order)"
        seen.add(match[0])
    assert seen == set(COLOURS.values())


def test_dtd_cache_is_bounded_and_reused(dtd_root: Path) -> None:
    source = DTDTextureSource(dtd_root, cache_size=2)
    first = source.load(0, 16)
    assert source.load(0, 16) is first  # served from the cache, not decoded again
    for i in range(4):
        source.load(i, 16)
    assert len(source._cache) == 2
    assert source.load(0, 24).shape == (24, 24, 3)  # the size is part of the key


def test_dtd_seeded_sampling_is_deterministic(dtd_root: Path) -> None:
    a = DTDTextureSource(dtd_root)
    b = DTDTextureSource(dtd_root)
    ra, rb = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(10):
        np.testing.assert_array_equal(a.sample(ra, 16), b.sample(rb, 16))


def test_dtd_without_images_names_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "dtd_empty"
    (empty / "images" / "banded").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=re.escape(str(empty / "images"))):
        DTDTextureSource(empty)


def test_dtd_corrupt_jpeg_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "dtd" / "images" / "bad"
    folder.mkdir(parents=True)
    (folder / "bad_0001.jpg").write_bytes(b"this is not a jpeg")
    source = DTDTextureSource(tmp_path / "dtd")
    with pytest.raises(ImageReadError, match="bad_0001.jpg"):
        source.sample(np.random.default_rng(0), 16)


def test_procedural_textures_are_varied_colour_images() -> None:
    source = ProceduralTextureSource()
    assert isinstance(source, TextureSource)
    rng = np.random.default_rng(0)
    textures = [source.sample(rng, 64) for _ in range(24)]
    for tex in textures:
        assert tex.shape == (64, 64, 3) and tex.dtype == np.uint8
        assert tex.reshape(-1, 3).std(axis=0).max() > 5.0  # not flat
    means = np.array([t.reshape(-1, 3).mean(axis=0) for t in textures])
    assert means.std(axis=0).min() > 20.0  # different palettes
    assert not np.array_equal(textures[0], textures[1])


def test_procedural_is_seeded_and_handles_odd_sizes() -> None:
    source = ProceduralTextureSource()
    a = source.sample(np.random.default_rng(3), 77)
    b = source.sample(np.random.default_rng(3), 77)
    assert a.shape == (77, 77, 3)
    np.testing.assert_array_equal(a, b)


def test_factory_builds_the_source_the_config_names(dtd_root: Path) -> None:
    assert isinstance(create_texture_source("dtd", dtd_root), DTDTextureSource)
    assert isinstance(create_texture_source("procedural"), ProceduralTextureSource)
    assert isinstance(create_texture_source("procedural", dtd_root), ProceduralTextureSource)
    check_texture_source(DataConfig(texture_source="dtd", dtd_root=str(dtd_root)))
    check_texture_source(DataConfig(texture_source="procedural"))


@pytest.mark.parametrize("root", [None, "", "nowhere", "empty"])
def test_dtd_source_without_dtd_images_is_refused_naming_dtd_root(root: str | None, tmp_path: Path) -> None:
    # No silent procedural stand-in: the default source is DTD, and it needs the images.
    if root in ("nowhere", "empty"):
        root = str(tmp_path / root)
        if root.endswith("empty"):
            (Path(root) / "images" / "banded").mkdir(parents=True)
    assert DataConfig(dtd_root=root).texture_source == "dtd"
    for refuse in (lambda: check_texture_source(DataConfig(dtd_root=root)), lambda: create_texture_source("dtd", root)):
        with pytest.raises(ConfigError) as info:
            refuse()
        message = str(info.value)
        assert message.startswith("data.dtd_root:")
        assert "memseg data download dtd" in message and "data.texture_source=procedural" in message
        if root:
            assert root in message
