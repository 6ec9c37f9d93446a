"""The generated MVTec-layout dataset: layout, grayscale files, defect masks, seeding, foreground thresholds."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from memseg.data.categories import CATEGORIES, GRAYSCALE, OBJECTS, category_defaults
from memseg.data.mvtec import check_layout, list_category, read_image, read_mask
from memseg.data.synthetic_mvtec import (
    MAX_DEFECT_COVERAGE,
    MIN_DEFECT_COVERAGE,
    README_MARKER,
    defect_types,
    generate_dataset,
)
from memseg.errors import ConfigError, DatasetLayoutError
from tests.helpers.data import make_category


@pytest.fixture(scope="module")
def all_categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("all15"), size=64, n_train=4, n_test_good=2, n_test_defect=6, seed=0
    )


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_fixture_dataset_passes_the_layout_check(synthetic_root: Path) -> None:
    assert check_layout(synthetic_root, ["carpet", "bottle"]) == []
    files = list_category(synthetic_root, "bottle")
    assert len(files.train) == 24
    assert sum(s.label == 0 for s in files.test) == 6 and sum(s.label == 1 for s in files.test) == 8
    assert files.defect_types == sorted(defect_types("bottle"))
    assert read_image(files.train[0].path, 64).shape == (64, 64, 3)
    readme = (synthetic_root / "readme.txt").read_text()
    assert README_MARKER in readme and "NOT MVTec AD" in readme
    assert "no third-party images" in (synthetic_root / "license.txt").read_text()


def test_all_fifteen_categories_are_written_and_valid(all_categories: Path) -> None:
    names = sorted(p.name for p in all_categories.iterdir() if p.is_dir())
    assert names == sorted(CATEGORIES)
    assert check_layout(all_categories) == []
    for category in CATEGORIES:
        files = list_category(all_categories, category)
        assert len(files.defect_types) >= 2, category
        assert len({s.path.parent.name for s in files.test if s.label == 1}) >= 2


def test_grayscale_categories_are_single_channel_on_disk(all_categories: Path) -> None:
    for category in CATEGORIES:
        path = all_categories / category / "train" / "good" / "000.png"
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert (raw.ndim == 2) == (category in GRAYSCALE), category
        if category not in GRAYSCALE:
            assert raw.shape == (64, 64, 3)
            assert np.abs(raw[..., 0].astype(int) - raw[..., 2]).mean() > 2, f"{category} looks gray"


def test_defect_masks_are_binary_non_empty_and_in_the_coverage_range(all_categories: Path) -> None:
    for category in CATEGORIES:
        for sample in list_category(all_categories, category).test:
            raw = cv2.imread(str(sample.mask_path), cv2.IMREAD_UNCHANGED) if sample.mask_path else None
            if sample.label == 0:
                assert raw is None
                continue
            assert set(np.unique(raw)) == {0, 255}, sample.mask_path
            coverage = float((raw > 0).mean())
            assert MIN_DEFECT_COVERAGE <= coverage <= MAX_DEFECT_COVERAGE, (sample.mask_path, coverage)


def test_defects_change_the_pixels_under_their_mask(all_categories: Path) -> None:
    # A defect image against the mean normal image of its category: the change concentrates in the mask.
    for category in CATEGORIES:
        files = list_category(all_categories, category)
        if category in ("carpet", "grid", "leather", "tile", "wood"):
            continue  # stochastic textures: no meaningful mean image
        normal = np.mean([read_image(s.path, 64).astype(float) for s in files.train], axis=0)
        ratios = []
        for sample in (s for s in files.test if s.label == 1):
            diff = np.abs(read_image(sample.path, 64).astype(float) - normal).max(axis=2)
            mask = read_mask(sample.mask_path, 64).astype(bool)
            ratios.append(diff[mask].mean() / (diff[~mask].mean() + 1e-6))
        assert np.median(ratios) > 1.5, (category, ratios)


def test_normal_images_vary_like_a_production_line(synthetic_root: Path) -> None:
    for category in ("carpet", "bottle"):
        images = [read_image(s.path, 64).astype(float) for s in list_category(synthetic_root, category).train[:6]]
        brightness = [im.mean() for im in images]
        assert np.ptp(brightness) > 1.0, category  # lighting gain differs
        for a, b in itertools.pairwise(images):
            assert np.abs(a - b).mean() > 1.0, category


def test_object_foregrounds_work_with_the_authors_thresholds(all_categories: Path) -> None:
    for category in OBJECTS:
        d = category_defaults(category)
        if not d.use_foreground_mask:
            continue
        for sample in list_category(all_categories, category).train:
            gray = cv2.cvtColor(read_image(sample.path, 64), cv2.COLOR_RGB2GRAY)
            fg = gray > d.foreground_threshold if d.foreground_bright else gray <= d.foreground_threshold
            # the object is found (not nothing, not the whole image) and the border is background
            assert 0.03 < fg.mean() < 0.9, (category, fg.mean())
            border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
            if category != "zipper":  # the zipper's fabric runs off the top and bottom edges
                assert border.mean() < 0.05, (category, border.mean())


def test_same_seed_repeats_and_another_seed_differs(tmp_path: Path) -> None:
    kwargs = {"size": 48, "categories": ("screw", "wood"), "n_train": 3, "n_test_good": 1, "n_test_defect": 3}
    a = _digest(generate_dataset(tmp_path / "a", seed=5, **kwargs))
    b = _digest(generate_dataset(tmp_path / "b", seed=5, **kwargs))
    c = _digest(generate_dataset(tmp_path / "c", seed=6, **kwargs))
    assert a == b and a != c


def test_a_category_does_not_depend_on_the_others(tmp_path: Path) -> None:
    kwargs = {"size": 48, "n_train": 2, "n_test_good": 1, "n_test_defect": 2, "seed": 0}
    alone = generate_dataset(tmp_path / "alone", categories=("pill",), **kwargs)
    mixed = generate_dataset(tmp_path / "mixed", categories=("wood", "pill"), **kwargs)
    assert _digest(alone / "pill") == _digest(mixed / "pill")


def test_regenerating_replaces_old_files(tmp_path: Path) -> None:
    kwargs = {"size": 48, "categories": ("tile",), "n_test_good": 1, "n_test_defect": 2}
    generate_dataset(tmp_path, n_train=5, **kwargs)
    generate_dataset(tmp_path, n_train=2, **kwargs)
    assert len(list((tmp_path / "tile" / "train" / "good").glob("*.png"))) == 2


def test_refuses_to_overwrite_a_dataset_it_did_not_write(tmp_path: Path) -> None:
    make_category(tmp_path, "bottle")
    with pytest.raises(DatasetLayoutError, match="refusing to overwrite"):
        generate_dataset(tmp_path, size=48, categories=("bottle",), n_train=2, n_test_good=1, n_test_defect=1)
    assert len(list((tmp_path / "bottle" / "train" / "good").glob("*.png"))) == 3  # untouched


def test_bad_arguments_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown \\['widget'\\]"):
        generate_dataset(tmp_path, categories=("widget",))
    with pytest.raises(ConfigError, match="n_train"):
        generate_dataset(tmp_path, n_train=0)
    with pytest.raises(ConfigError, match="size"):
        generate_dataset(tmp_path, size=8)
