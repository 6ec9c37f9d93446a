"""Structural anomaly source: mirror, rotation, colour jitter, grid shuffle."""

from __future__ import annotations

import numpy as np
import pytest

from memseg.config import SynthesisConfig
from memseg.synthesis.structure_source import jitter_colour, shuffle_grid, structure_source

NO_JITTER = {
    "structure_rotation_deg": 0.0,
    "structure_color_jitter": 0.0,
    "structure_hue_jitter": 0.0,
}


def _cell_image(rows: int, cols: int, ch: int, cw: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """An image whose grid cells each have one distinct uniform colour."""
    colours = [(10 + 3 * k, 250 - 3 * k, (31 * k) % 256) for k in range(rows * cols)]
    image = np.zeros((rows * ch, cols * cw, 3), dtype=np.uint8)
    for k, colour in enumerate(colours):
        r, c = divmod(k, cols)
        image[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = colour
    return image, colours


def _cells(image: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    ch, cw = image.shape[0] // rows, image.shape[1] // cols
    return [image[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] for r in range(rows) for c in range(cols)]


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_without_jitter_output_is_a_permutation_of_cells(flip_p: float) -> None:
    cfg = SynthesisConfig(**NO_JITTER, structure_flip_probability=flip_p)
    image, colours = _cell_image(4, 8, 6, 5)
    out = structure_source(image, np.random.default_rng(0), cfg)
    assert out.shape == image.shape and out.dtype == np.uint8
    out_colours = []
    for cell in _cells(out, 4, 8):
        flat = cell.reshape(-1, 3)
        assert (flat == flat[0]).all(), "each output cell must be one whole input cell"
        out_colours.append(tuple(int(v) for v in flat[0]))
    assert sorted(out_colours) == sorted(colours)
    assert out_colours != colours  # shuffled


def test_shuffle_follows_permutation() -> None:
    image, colours = _cell_image(2, 3, 4, 4)
    perm = np.array([5, 4, 3, 2, 1, 0])
    out = shuffle_grid(image, 2, 3, perm)
    got = [tuple(int(v) for v in c[0, 0]) for c in _cells(out, 2, 3)]
    assert got == [colours[k] for k in perm]


@pytest.mark.parametrize("shape", [(250, 251, 3), (33, 70, 3), (3, 5, 3)])
def test_non_divisible_sizes_keep_shape(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = structure_source(image, np.random.default_rng(1), SynthesisConfig())
    assert out.shape == shape and out.dtype == np.uint8


def test_non_divisible_remainder_strip_stays_in_place() -> None:
    cfg = SynthesisConfig(**NO_JITTER, structure_flip_probability=0.0)
    image = np.random.default_rng(0).integers(0, 256, (22, 35, 3), dtype=np.uint8)  # 4x8 cells of 5x4 px
    out = structure_source(image, np.random.default_rng(3), cfg)
    np.testing.assert_array_equal(out[20:], image[20:])
    np.testing.assert_array_equal(out[:, 32:], image[:, 32:])
    assert not np.array_equal(out[:20, :32], image[:20, :32])
    # The shuffled region holds the same pixels.
    np.testing.assert_array_equal(np.sort(out[:20, :32].reshape(-1)), np.sort(image[:20, :32].reshape(-1)))


def test_grid_size_comes_from_config() -> None:
    cfg = SynthesisConfig(**NO_JITTER, structure_flip_probability=0.0, structure_grid_rows=8, structure_grid_cols=8)
    image, colours = _cell_image(8, 8, 3, 3)
    out = structure_source(image, np.random.default_rng(0), cfg)
    got = sorted(tuple(int(v) for v in c[0, 0]) for c in _cells(out, 8, 8))
    assert got == sorted(colours)


def test_seeded_equality_and_different_seeds_differ() -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = SynthesisConfig()
    a = structure_source(image, np.random.default_rng(9), cfg)
    b = structure_source(image, np.random.default_rng(9), cfg)
    c = structure_source(image, np.random.default_rng(10), cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_colour_jitter_identity_and_brightness() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    same = jitter_colour(image, 0.0, 1.0, 1.0)
    # HSV round trip in 8 bits is only approximately lossless.
    assert np.abs(same.astype(int) - image.astype(int)).mean() < 2.0
    darker = jitter_colour(image, 0.0, 1.0, 0.5)
    # Value = max channel, so halving V halves every channel of the pixel.
    ratio = darker.astype(float).max(axis=2).mean() / image.astype(float).max(axis=2).mean()
    assert ratio == pytest.approx(0.5, abs=0.02)


def test_hue_shift_rotates_colours() -> None:
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    green = jitter_colour(red, 1.0 / 3.0, 1.0, 1.0)  # +120 degrees
    np.testing.assert_array_equal(green[0, 0], [0, 255, 0])


def test_colour_jitter_changes_the_image() -> None:
    image, _ = _cell_image(4, 8, 6, 5)
    base = SynthesisConfig(**NO_JITTER, structure_flip_probability=0.0)
    jittered = base.model_copy(update={"structure_color_jitter": 0.5, "structure_hue_jitter": 0.2})
    a = structure_source(image, np.random.default_rng(2), base)
    b = structure_source(image, np.random.default_rng(2), jittered)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 3.0


def test_rejects_grayscale() -> None:
    with pytest.raises(ValueError, match="H, W, 3"):
        structure_source(np.zeros((8, 8), dtype=np.uint8), np.random.default_rng(0), SynthesisConfig())
