"""The realistic benchmark: layout, masks, seeding, metadata, and defects that change only their footprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from memseg.data import surface_photos
from memseg.data.defects import DEFECT_TYPES, MAX_COVERAGE, MIN_COVERAGE, MIN_VISIBILITY, Donor, paint_defect
from memseg.data.mvtec import check_layout, list_category, read_mask, read_rgb
from memseg.data.surface_photos import (
    CATEGORIES,
    METADATA_FILE,
    PHOTOS,
    SURFACE_CATEGORIES,
    MissingExtraError,
    generate_dataset,
)
from memseg.errors import ConfigError, DatasetLayoutError
from pipelines.cli import main

SMALL = {"size": 64, "n_train": 4, "n_test_good": 2, "n_test_defect": 8}


def _generate(out: Path, *, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> Path:
    return generate_dataset(out, size=64, categories=categories, n_train=4, n_test_good=2, n_test_defect=8, seed=seed)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def seed0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("realistic0"))


def test_the_dataset_is_in_the_mvtec_layout_with_every_defect_type(seed0: Path) -> None:
    assert check_layout(seed0, CATEGORIES) == []
    for category in CATEGORIES:
        files = list_category(seed0, category)
        assert len(files.train) == SMALL["n_train"]
        assert sum(1 for s in files.test if s.label == 0) == SMALL["n_test_good"]
        assert sorted(files.defect_types) == sorted(SURFACE_CATEGORIES[category].defects)
        assert sum(1 for s in files.test if s.label == 1) == SMALL["n_test_defect"]


def test_grayscale_photos_give_single_channel_files(seed0: Path) -> None:
    for category, spec in SURFACE_CATEGORIES.items():
        raw = cv2.imread(str(seed0 / category / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
        assert raw is not None
        assert raw.shape == ((64, 64) if spec.gray else (64, 64, 3)), category


def test_every_mask_is_binary_non_empty_and_within_the_coverage_range(seed0: Path) -> None:
    for category in CATEGORIES:
        for sample in list_category(seed0, category).test:
            if sample.label == 0:
                continue
            assert sample.mask_path is not None
            raw = cv2.imread(str(sample.mask_path), cv2.IMREAD_UNCHANGED)
            assert raw is not None, sample.mask_path
            assert raw.shape == read_rgb(sample.path).shape[:2], sample.mask_path
            assert set(np.unique(raw)) <= {0, 255}, sample.mask_path
            coverage = float(read_mask(sample.mask_path, 64).mean())
            assert MIN_COVERAGE <= coverage <= MAX_COVERAGE, (sample.mask_path, coverage)


def test_same_seed_gives_the_same_bytes_and_another_seed_other_images(seed0: Path, tmp_path: Path) -> None:
    again = _generate(tmp_path / "again")
    other = _generate(tmp_path / "other", seed=1)
    reference, repeated, reseeded = _files(seed0), _files(again), _files(other)
    assert repeated == reference
    assert reseeded.keys() == reference.keys()
    changed = [name for name in reference if reseeded[name] != reference[name]]
    assert len(changed) == len(reference), sorted(set(reference) - set(changed))[:5]


def test_a_category_does_not_depend_on_the_others_written(seed0: Path, tmp_path: Path) -> None:
    alone = _generate(tmp_path, categories=("gravel",))
    assert _files(alone / "gravel") == _files(seed0 / "gravel")


def test_the_metadata_names_the_photos_licences_counts_and_checksums(seed0: Path) -> None:
    meta = json.loads((seed0 / METADATA_FILE).read_text())
    assert meta["name"] == surface_photos.BENCHMARK_NAME
    assert (meta["seed"], meta["size"]) == (0, 64)
    assert sorted(meta["categories"]) == sorted(CATEGORIES)
    for key, photo in meta["photos"].items():
        assert photo["licence"] == PHOTOS[key].licence
        assert photo["sha256"] == hashlib.sha256(surface_photos.photo_path(key).read_bytes()).hexdigest()
    for category, entry in meta["categories"].items():
        assert entry["photo"] in meta["photos"]
        assert entry["counts"]["train_good"] == SMALL["n_train"]
        assert sum(entry["counts"]["test_defect"].values()) == SMALL["n_test_defect"]
        assert entry["sha256"] == surface_photos._tree_digest(seed0 / category)
    licence = (seed0 / "license.txt").read_text()
    assert all(p.licence in licence and p.file in licence for p in PHOTOS.values())


def test_a_rerun_with_another_seed_leaves_no_stale_category(tmp_path: Path) -> None:
    _generate(tmp_path, categories=("brick", "grass"))
    _generate(tmp_path, categories=("grass",), seed=3)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert sorted(meta["categories"]) == ["grass"]
    assert not (tmp_path / "brick").exists()
    _generate(tmp_path, categories=("gravel",), seed=3)  # same run settings: kept
    assert sorted(json.loads((tmp_path / METADATA_FILE).read_text())["categories"]) == ["grass", "gravel"]


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {category: surface_photos._crop(category, 128, rng) for category in CATEGORIES}


def _donor(category: str, seed: int) -> Donor:
    return lambda: surface_photos._donor(category, 128, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_each_defect_changes_pixels_mostly_inside_its_mask(kind: str, crops: dict[str, np.ndarray]) -> None:
    categories = [c for c, spec in SURFACE_CATEGORIES.items() if kind in spec.defects]
    assert categories, f"{kind} is drawn in no category"
    ring = np.ones((3, 3), np.uint8)
    for category in categories:
        clean = crops[category]
        for seed in range(4):
            image, mask = paint_defect(kind, clean, np.random.default_rng(seed), donor=_donor(category, seed))
            assert image.shape == clean.shape and image.dtype == np.float32
            assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
            change = np.abs(image - clean).max(axis=2)
            near = cv2.dilate(mask.astype(np.uint8), ring).astype(bool)
            where = (category, seed)
            # anti-aliased edges just outside the binarised footprint carry a little of the change
            assert change[near].sum() >= 0.9 * change.sum(), where
            assert change[mask].sum() >= 0.6 * change.sum(), where
            assert float(change[mask].mean()) >= MIN_VISIBILITY, where
            assert float(change[~near].max(initial=0.0)) < 0.15, where


def test_defect_types_look_different_from_each_other(crops: dict[str, np.ndarray]) -> None:
    # the same image and seed through every painter: six different footprints
    clean = crops["brick"]
    masks = [paint_defect(kind, clean, np.random.default_rng(0), donor=_donor("brick", 0))[1] for kind in DEFECT_TYPES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not np.array_equal(masks[i], masks[j]), (DEFECT_TYPES[i], DEFECT_TYPES[j])


def test_bad_arguments_are_errors_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="categories"):
        generate_dataset(tmp_path, categories=["carpet"])
    with pytest.raises(ConfigError, match="size"):
        generate_dataset(tmp_path, size=16)
    with pytest.raises(ConfigError, match="n_test_defect"):
        generate_dataset(tmp_path, n_test_defect=0)
    with pytest.raises(ValueError, match="donor"):
        paint_defect("cut_paste", np.zeros((64, 64, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown"):
        paint_defect("dent", np.zeros((64, 64, 3), np.float32), np.random.default_rng(0))


def test_a_foreign_dataset_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "brick" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="refusing to overwrite"):
        _generate(tmp_path, categories=("brick",))
    assert (tmp_path / "brick" / "train" / "good").is_dir()


def test_without_scikit_image_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = surface_photos.importlib.util.find_spec
    monkeypatch.setattr(surface_photos.importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else real(name, *a))
    surface_photos._load_photo.cache_clear()
    try:
        with pytest.raises(MissingExtraError, match=r"memseg\[bench-data\]"):
            _generate(tmp_path / "out")
    finally:
        surface_photos._load_photo.cache_clear()
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_the_cli_writes_a_dataset_that_memseg_data_check_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "realistic"
    argv = ["data", "realistic", "--out", str(out), "--size", "64", "--categories", "brick", "tissue",
            "--n-train", "5", "--n-test-good", "2", "--n-test-defect", "4", "--seed", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 realistic categories (64 px, seed 2)" in printed and METADATA_FILE in printed
    assert main(["data", "check", "--root", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "brick: train 5, test good 2, test defect 4 (crack, cut_paste, pitting, stain)",
        "tissue: train 5, test good 2, test defect 4 (cut_paste, pitting, stain, warp)",
    ]
    assert main(["data", "realistic", "--out", str(tmp_path / "x"), "--categories", "carpet"]) == 1
    assert "categories: unknown ['carpet']" in capsys.readouterr().err
