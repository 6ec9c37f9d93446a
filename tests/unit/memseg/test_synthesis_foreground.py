"""Foreground masks per category (the per-category thresholds, THRESH_BINARY semantics)."""

from __future__ import annotations

import numpy as np
import pytest

from memseg.config import SynthesisConfig, load_config, resolve_for_category
from memseg.data.categories import CATEGORIES, TEXTURES
from memseg.errors import ConfigError
from memseg.synthesis.foreground import ForegroundRule, foreground_for, foreground_mask

# (category, threshold, bright) of the categories with a foreground mask (docs/model.md, "Anomaly synthesis").
MASKED = [
    ("bottle", 250, False),
    ("capsule", 120, False),
    ("hazelnut", 50, True),
    ("metal_nut", 40, True),
    ("pill", 100, True),
    ("screw", 110, False),
    ("toothbrush", 30, True),
    ("transistor", 90, False),
    ("zipper", 100, False),
]


def _object_image(fg_level: int, bg_level: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A grey square object in the middle of a uniform background, and its true mask."""
    truth = np.zeros((size, size), dtype=np.float32)
    truth[8:24, 10:20] = 1.0
    image = np.full((size, size, 3), bg_level, dtype=np.uint8)
    image[truth == 1] = fg_level
    return image, truth


@pytest.mark.parametrize(("category", "threshold", "bright"), MASKED)
def test_category_rule_finds_the_object(category: str, threshold: int, bright: bool) -> None:
    rule = foreground_for(SynthesisConfig(), category)
    assert rule == ForegroundRule(threshold=threshold, bright=bright)
    # The object sits on the foreground side of the threshold, the background on the other side.
    fg_level = min(threshold + 5, 255) if bright else max(threshold - 20, 0)
    bg_level = max(threshold - 20, 0) if bright else 255
    image, truth = _object_image(fg_level, bg_level)
    np.testing.assert_array_equal(rule(image), truth)


@pytest.mark.parametrize("category", [*TEXTURES, "cable"])
def test_categories_without_mask(category: str) -> None:
    assert foreground_for(SynthesisConfig(), category) is None


def test_every_category_resolves() -> None:
    for category in CATEGORIES:
        resolved = resolve_for_category(load_config(), category).synthesis
        assert foreground_for(resolved) == foreground_for(SynthesisConfig(), category)


def test_threshold_boundary_semantics() -> None:
    image = np.array([[99, 100, 101]], dtype=np.uint8)
    np.testing.assert_array_equal(foreground_mask(image, 100, bright=True), [[0, 0, 1]])
    np.testing.assert_array_equal(foreground_mask(image, 100, bright=False), [[1, 1, 0]])
    out = foreground_mask(image, 100, bright=True)
    assert out.dtype == np.float32


def test_rgb_is_converted_with_luma_weights() -> None:
    # Pure red has luma 0.299 * 255 = 76; pure green 0.587 * 255 = 150.
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    image[0, 1] = (0, 255, 0)
    np.testing.assert_array_equal(foreground_mask(image, 100, bright=True), [[0, 1]])
    np.testing.assert_array_equal(foreground_mask(image, 70, bright=True), [[1, 1]])


def test_explicit_config_overrides_category_default() -> None:
    cfg = SynthesisConfig(use_foreground_mask=True, foreground_threshold=10, foreground_bright=True)
    assert foreground_for(cfg, "carpet") == ForegroundRule(10, True)
    assert foreground_for(SynthesisConfig(use_foreground_mask=False), "bottle") is None


def test_unresolved_config_without_category_names_the_key() -> None:
    with pytest.raises(ConfigError, match="synthesis.use_foreground_mask"):
        foreground_for(SynthesisConfig())
    with pytest.raises(ConfigError, match="synthesis.foreground_threshold"):
        foreground_for(SynthesisConfig(use_foreground_mask=True, foreground_bright=True))


def test_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        foreground_mask(np.zeros((4, 4, 3), dtype=np.float32), 10, True)
