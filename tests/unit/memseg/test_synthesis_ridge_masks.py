"""Thin-line synthesis masks (synthesis.ridge_mask_probability)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from memseg.config import SynthesisConfig, load_config
from memseg.errors import ConfigError
from memseg.synthesis.perlin import perlin_mask

SHAPE = (128, 128)


def _surviving_erosion(masks: list[np.ndarray]) -> float:
    """Share of mask pixels left after a 3x3 erosion: near 0 for strokes a few pixels wide, high for blobs."""
    kernel = np.ones((3, 3), np.uint8)
    kept = sum(float(cv2.erode(m.astype(np.uint8), kernel).sum()) for m in masks)
    return kept / max(sum(float(m.sum()) for m in masks), 1.0)


def test_ridge_masks_are_thin_and_blobs_are_not() -> None:
    rng = np.random.default_rng(0)
    ridges = [perlin_mask(rng, SHAPE, SynthesisConfig(ridge_mask_probability=1.0)) for _ in range(60)]
    blobs = [perlin_mask(rng, SHAPE, SynthesisConfig()) for _ in range(60)]
    assert np.mean([m.any() for m in ridges]) >= 0.9
    assert set(np.unique(np.concatenate([m.ravel() for m in ridges]))) <= {0.0, 1.0}
    # Measured: about 0.13 for lines, 0.43 for blobs (the paper's scale range includes small blobs).
    assert _surviving_erosion(ridges) < 0.2
    assert _surviving_erosion(blobs) > 2 * _surviving_erosion(ridges)


def test_off_by_default_and_the_random_stream_is_unchanged() -> None:
    assert SynthesisConfig().ridge_mask_probability == 0.0
    # With the option off no extra number is drawn: the masks equal those of a config without it.
    a = [perlin_mask(np.random.default_rng(7), SHAPE, SynthesisConfig()) for _ in range(3)]
    b = [perlin_mask(np.random.default_rng(7), SHAPE, SynthesisConfig(ridge_mask_width=0.2)) for _ in range(3)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_wider_line_covers_more() -> None:
    def coverage(width: float) -> float:
        rng = np.random.default_rng(3)
        cfg = SynthesisConfig(ridge_mask_probability=1.0, ridge_mask_width=width)
        return float(np.mean([perlin_mask(rng, SHAPE, cfg).mean() for _ in range(30)]))

    assert coverage(0.1) > 1.5 * coverage(0.03)


@pytest.mark.parametrize("item", ["synthesis.ridge_mask_probability=1.5", "synthesis.ridge_mask_width=0"])
def test_out_of_range_values_name_the_field(item: str) -> None:
    with pytest.raises(ConfigError, match=item.split("=")[0]):
        load_config(overrides=[item])
