"""Transparency blending (docs/model.md, "Anomaly synthesis")."""

from __future__ import annotations

import numpy as np
import pytest

from memseg.synthesis.blending import blend


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    source = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), dtype=np.float32)
    mask[5:15, 3:20] = 1.0
    return image, source, mask


def test_delta_one_pastes_source_inside_keeps_image_outside(pair) -> None:
    image, source, mask = pair
    out = blend(image, source, mask, 1.0)
    inside = mask == 1
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[inside], source[inside])
    np.testing.assert_array_equal(out[~inside], image[~inside])


def test_delta_zero_returns_image(pair) -> None:
    image, source, mask = pair
    np.testing.assert_array_equal(blend(image, source, mask, 0.0), image)


def test_empty_mask_returns_unchanged_copy(pair) -> None:
    image, source, _ = pair
    out = blend(image, source, np.zeros(image.shape[:2], dtype=np.float32), 0.7)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_partial_delta_matches_the_formula(pair) -> None:
    image, source, mask = pair
    delta = 0.37
    m = mask[..., None].astype(np.float64)
    i, s = image.astype(np.float64), source.astype(np.float64)
    expected = (1 - m) * i + delta * (m * s) + (1 - delta) * (m * i)
    out = blend(image, source, mask, delta).astype(np.float64)
    # float32 evaluation may flip a rounding tie, never more than one grey level.
    assert np.abs(out - np.rint(expected)).max() <= 1.0
    assert np.mean(out == np.rint(expected)) > 0.99


def test_hand_computed_values() -> None:
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    source = np.full((1, 2, 3), 200, dtype=np.uint8)
    mask = np.array([[1.0, 0.0]], dtype=np.float32)
    out = blend(image, source, mask, 0.25)
    np.testing.assert_array_equal(out[0, 0], [125, 125, 125])
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])


def test_inputs_are_not_modified(pair) -> None:
    image, source, mask = pair
    copies = image.copy(), source.copy(), mask.copy()
    blend(image, source, mask, 0.5)
    for before, after in zip(copies, (image, source, mask), strict=True):
        np.testing.assert_array_equal(before, after)


def test_shape_mismatch_and_bad_delta_raise(pair) -> None:
    image, source, mask = pair
    with pytest.raises(ValueError, match="shape"):
        blend(image, source[:10], mask, 0.5)
    with pytest.raises(ValueError, match="mask"):
        blend(image, source, mask[:10], 0.5)
    with pytest.raises(ValueError, match="delta"):
        blend(image, source, mask, 1.5)
