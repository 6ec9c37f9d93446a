"""Held-out validation defects: every family paints a visible, single-region defect with an exact mask,
deterministically, on the foreground only; the validation set and the config option use them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg.config import MemSegConfig, SynthesisConfig, resolve_for_category
from memseg.data import datasets as ds
from memseg.data.datasets import build_validation_set, category_splits
from memseg.data.mvtec import read_image
from memseg.errors import ConfigError
from memseg.synthesis.foreground import foreground_for
from memseg.synthesis.validation_defects import (
    FAMILIES,
    MAX_COVERAGE,
    MIN_COVERAGE,
    MIN_VISIBILITY,
    ValidationDefectPainter,
)

SIZE = 64


def _images(root: Path, category: str, n: int = 4) -> list[np.ndarray]:
    return [read_image(p, SIZE) for p in sorted((root / category / "train" / "good").glob("*.png"))[:n]]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_paints_one_visible_region_and_nothing_else(family: str, synthetic_root: Path) -> None:
    images = _images(synthetic_root, "carpet")
    painter = ValidationDefectPainter(None, donors=images[1:], families=(family,))
    for seed in range(5):
        image = images[0]
        painted = painter.paint(image, np.random.default_rng(seed))
        mask = painted.mask
        assert painted.kind == family
        assert painted.image.dtype == np.uint8
        assert painted.image.shape == image.shape
        assert mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert MIN_COVERAGE <= mask.mean() <= MAX_COVERAGE
        change = np.abs(painted.image.astype(np.float32) - image.astype(np.float32)).max(axis=2) / 255.0
        assert change[mask > 0].mean() >= MIN_VISIBILITY
        # Pixels well away from the mask (beyond the feathered rim) are untouched.
        near = cv2.dilate(mask.astype(np.uint8), np.ones((17, 17), np.uint8)) > 0
        assert np.array_equal(painted.image[~near], image[~near])
        # One region (polygon, ellipse or band), unlike the scattered blobs of a Perlin mask.
        n_regions, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert n_regions - 1 == 1


def test_the_same_seed_paints_the_same_defect_and_another_seed_another(synthetic_root: Path) -> None:
    images = _images(synthetic_root, "carpet")
    painter = ValidationDefectPainter(None, donors=images)
    first = painter.paint(images[0], np.random.default_rng(3))
    again = painter.paint(images[0], np.random.default_rng(3))
    other = painter.paint(images[0], np.random.default_rng(4))
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.mask, again.mask)
    assert first.kind == again.kind
    assert not np.array_equal(first.mask, other.mask)


def test_all_families_are_drawn_from_one_generator(synthetic_root: Path) -> None:
    images = _images(synthetic_root, "carpet")
    painter = ValidationDefectPainter(None, donors=images)
    rng = np.random.default_rng(0)
    kinds = {painter.paint(images[i % len(images)], rng).kind for i in range(60)}
    assert kinds == set(FAMILIES)


def test_defects_stay_on_the_foreground_of_an_object_category(synthetic_root: Path) -> None:
    cfg = SynthesisConfig()
    rule = foreground_for(cfg, "bottle")
    assert rule is not None
    images = _images(synthetic_root, "bottle")
    painter = ValidationDefectPainter.for_category(cfg, "bottle", donors=images)
    rng = np.random.default_rng(0)
    for i in range(12):
        image = images[i % len(images)]
        painted = painter.paint(image, rng)
        assert painted.mask.any()
        assert not (painted.mask * (1 - rule(image))).any(), painted.kind


def test_an_image_without_foreground_is_returned_unchanged_with_an_empty_mask() -> None:
    white = np.full((SIZE, SIZE, 3), 255, np.uint8)  # bottle's foreground is the dark object
    painted = ValidationDefectPainter.for_category(SynthesisConfig(), "bottle").paint(white, np.random.default_rng(0))
    assert painted.kind == ""
    assert not painted.mask.any()
    assert np.array_equal(painted.image, white)


def test_grey_images_stay_grey(synthetic_root: Path) -> None:
    images = [np.repeat(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2) for im in _images(synthetic_root, "carpet")]
    painter = ValidationDefectPainter(None, donors=images)
    rng = np.random.default_rng(0)
    for _ in range(12):
        out = painter.paint(images[0], rng).image
        assert np.array_equal(out[..., 0], out[..., 1])
        assert np.array_equal(out[..., 0], out[..., 2])


def test_bad_painter_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="families"):
        ValidationDefectPainter(None, families=("perlin",))
    with pytest.raises(ValueError, match="attempts"):
        ValidationDefectPainter(None, attempts=0)
    with pytest.raises(ValueError, match="uint8"):
        ValidationDefectPainter(None).paint(np.zeros((SIZE, SIZE, 3), np.float32), np.random.default_rng(0))


@pytest.fixture
def carpet_cfg(synthetic_root: Path) -> MemSegConfig:
    cfg = MemSegConfig().with_overrides({
        "data.root": str(synthetic_root), "data.category": "carpet", "data.image_size": SIZE,
        "data.texture_source": "procedural", "data.val_min_images": 4, "model.memory_size": 4,
    })
    return resolve_for_category(cfg)


def test_the_held_out_validation_set_is_fixed_and_not_the_training_synthesis(carpet_cfg: MemSegConfig) -> None:
    _, splits = category_splits(carpet_cfg)
    held_cfg = carpet_cfg.with_overrides({"data.val_anomaly_source": "held_out"})
    ds._VAL_CACHE.clear()
    synthesis = build_validation_set(splits.val, carpet_cfg.with_overrides({"data.val_anomaly_source": "training_synthesis"}))
    held = build_validation_set(splits.val, held_cfg)
    k, n = carpet_cfg.data.val_anomalies_per_image, len(splits.val)
    assert len(held) == n * (1 + k)
    assert held.labels.tolist() == ([0] + [1] * k) * n
    assert all(held.masks[i].any() == bool(held.labels[i]) for i in range(len(held)))
    # Same clean images, other anomalies: the cache keeps the sources apart.
    assert torch.equal(held.images[held.labels == 0], synthesis.images[synthesis.labels == 0])
    assert not np.array_equal(held.masks, synthesis.masks)
    assert build_validation_set(splits.val, held_cfg) is held
    # Independent of the training seed, dependent on the validation seed.
    ds._VAL_CACHE.clear()
    rebuilt = build_validation_set(splits.val, held_cfg.with_overrides({"train.seed": 999}))
    assert torch.equal(rebuilt.images, held.images)
    assert np.array_equal(rebuilt.masks, held.masks)
    other = build_validation_set(splits.val, held_cfg.with_overrides({"eval.val_seed": 5}))
    assert not np.array_equal(other.masks, held.masks)


def test_val_anomaly_source_is_a_config_field_with_the_held_out_painter_as_default() -> None:
    assert MemSegConfig().data.val_anomaly_source == "held_out"
    cfg = MemSegConfig().with_overrides(["data.val_anomaly_source=training_synthesis"])
    assert cfg.flatten()["data.val_anomaly_source"] == "training_synthesis"
    with pytest.raises(ConfigError, match=r"data\.val_anomaly_source"):
        MemSegConfig().with_overrides({"data.val_anomaly_source": "test_generator"})
