"""MVTec layout reader and check: every broken layout is named; decoding policy of images and masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from memseg.data.mvtec import check_layout, list_category, mask_path_for, read_image, read_mask
from memseg.errors import DatasetLayoutError, ImageReadError
from tests.helpers.data import make_category, write_png


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_category(tmp_path, "bottle", n_train=3, n_good=2, defects={"broken": 2, "crack": 1})
    return tmp_path


def test_list_category_orders_train_and_pairs_masks(root: Path) -> None:
    files = list_category(root, "bottle")
    assert [s.path.name for s in files.train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.mask_path is None for s in files.train)
    good = [s for s in files.test if s.label == 0]
    bad = [s for s in files.test if s.label == 1]
    assert len(good) == 2 and all(s.mask_path is None and s.defect_type == "good" for s in good)
    assert [(s.defect_type, s.path.name) for s in bad] == [("broken", "000.png"), ("broken", "001.png"),
                                                           ("crack", "000.png")]
    assert bad[0].mask_path == root / "bottle" / "ground_truth" / "broken" / "000_mask.png"
    assert files.defect_types == ["broken", "crack"]
    assert check_layout(root) == []


def test_mask_path_follows_the_official_naming() -> None:
    assert mask_path_for(Path("/d/cable/test/bent_wire/007.png")) == Path("/d/cable/ground_truth/bent_wire/007_mask.png")


def test_missing_category_folder_is_named(root: Path) -> None:
    with pytest.raises(DatasetLayoutError) as info:
        list_category(root, "screw")
    assert str(root / "screw") in str(info.value) and "category folder is missing" in str(info.value)
    assert any(str(root / "screw") in p for p in check_layout(root, ["bottle", "screw"]))


def test_missing_category_hints_at_a_nested_root(tmp_path: Path) -> None:
    make_category(tmp_path / "mvtec_anomaly_detection", "bottle")
    problems = check_layout(tmp_path, ["bottle"])
    assert len(problems) == 1 and "use --root" in problems[0] and "mvtec_anomaly_detection" in problems[0]


def test_test_image_without_mask_is_named(root: Path) -> None:
    mask = root / "bottle" / "ground_truth" / "broken" / "001_mask.png"
    mask.unlink()
    with pytest.raises(DatasetLayoutError) as info:
        list_category(root, "bottle")
    image = root / "bottle" / "test" / "broken" / "001.png"
    assert info.value.problems == [f"{image}: test image has no mask {mask}"]
    assert str(image) in str(info.value)


def test_every_problem_is_listed_not_only_the_first(root: Path) -> None:
    (root / "bottle" / "ground_truth" / "broken" / "000_mask.png").unlink()
    (root / "bottle" / "ground_truth" / "crack" / "000_mask.png").unlink()
    write_png(root / "bottle" / "train" / "good" / "003.png", np.zeros((2, 2), np.uint8))
    (root / "bottle" / "train" / "good" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    problems = check_layout(root, ["bottle", "cable"])
    joined = "\n".join(problems)
    assert "broken/000.png: test image has no mask" in joined
    assert "crack/000.png: test image has no mask" in joined
    assert "004.png: cannot decode image" in joined
    assert str(root / "cable") in joined
    assert len(problems) == 4


def test_corrupt_png_is_named_by_check_and_read(root: Path) -> None:
    bad = root / "bottle" / "test" / "good" / "001.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    problems = check_layout(root, ["bottle"])
    assert problems == [f"{bad}: cannot decode image (unreadable or corrupt file)"]
    assert check_layout(root, ["bottle"], decode=False) == []  # the cheap check only looks at names
    with pytest.raises(ImageReadError, match=str(bad)):
        read_image(bad, 32)


def test_corrupt_mask_is_named(root: Path) -> None:
    mask = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    mask.write_bytes(b"not a png at all")
    assert check_layout(root) == [f"{mask}: cannot decode image (unreadable or corrupt file)"]


def test_mask_size_mismatch_is_named(root: Path) -> None:
    mask = root / "bottle" / "ground_truth" / "broken" / "001_mask.png"
    write_png(mask, np.full((16, 20), 255, np.uint8))
    problems = check_layout(root)
    assert problems == [f"{mask}: mask is 20x16 but its image 001.png is 32x32"]


def test_non_binary_mask_is_named(root: Path) -> None:
    mask = root / "bottle" / "ground_truth" / "broken" / "000_mask.png"
    write_png(mask, np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)))
    problems = check_layout(root)
    assert len(problems) == 1 and problems[0].startswith(f"{mask}: mask is not binary")


def test_orphan_mask_is_named(root: Path) -> None:
    orphan = root / "bottle" / "ground_truth" / "crack" / "005_mask.png"
    write_png(orphan, np.zeros((32, 32), np.uint8))
    problems = check_layout(root, decode=False)
    assert len(problems) == 1 and problems[0].startswith(f"{orphan}: mask has no test image")


def test_wrong_folder_layouts_are_named(tmp_path: Path) -> None:
    # images straight in train/ (no good/), no test/ folder, and an empty train/good in another category
    write_png(tmp_path / "wood" / "train" / "000.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "tile" / "train" / "good").mkdir(parents=True)
    (tmp_path / "tile" / "test" / "good").mkdir(parents=True)
    write_png(tmp_path / "tile" / "test" / "good" / "000.png", np.zeros((8, 8, 3), np.uint8))
    problems = check_layout(tmp_path)
    assert f"{tmp_path / 'wood' / 'train' / 'good'}: folder is missing (images found directly in train/: " \
           "move them to train/good/)" in problems
    assert f"{tmp_path / 'wood' / 'test'}: folder is missing" in problems
    assert f"{tmp_path / 'tile' / 'train' / 'good'}: no images (expected *.png)" in problems
    assert f"{tmp_path / 'tile' / 'test'}: no test/<defect_type>/ folders besides good/" in problems
    assert len(problems) == 4
    with pytest.raises(DatasetLayoutError):
        list_category(tmp_path, "wood")


def test_loose_test_images_and_missing_root_are_named(tmp_path: Path) -> None:
    make_category(tmp_path, "pill")
    write_png(tmp_path / "pill" / "test" / "loose.png", np.zeros((8, 8, 3), np.uint8))
    assert check_layout(tmp_path) == [f"{tmp_path / 'pill' / 'test'}: 1 image(s) directly in test/ "
                                      "(expected test/<defect_type>/)"]
    missing = tmp_path / "nowhere"
    assert check_layout(missing) == [f"{missing}: dataset root does not exist or is not a folder"]
    with pytest.raises(DatasetLayoutError, match="nowhere"):
        list_category(missing, "pill")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no category folders" in check_layout(empty)[0]


def test_test_good_folder_is_required(root: Path) -> None:
    shutil.rmtree(root / "bottle" / "test" / "good")
    assert check_layout(root) == [f"{root / 'bottle' / 'test' / 'good'}: folder is missing (normal test images)"]


def test_custom_category_names_work(tmp_path: Path) -> None:
    make_category(tmp_path, "my_widget", defects={"dent": 1})
    files = list_category(tmp_path, "my_widget")
    assert files.defect_types == ["dent"] and len(files.train) == 3


def test_grayscale_image_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    path = write_png(tmp_path / "g.png", gray)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2  # really single-channel on disk
    rgb = read_image(path, 32)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    # INTER_AREA averages pixel pairs: column j holds the mean of source columns 2j and 2j+1.
    assert rgb[0, 5, 0] == round((gray[0, 10] + gray[0, 11]) / 2)


def test_colour_image_is_read_as_rgb_and_16bit_alpha_handled(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    path = write_png(tmp_path / "red.png", rgb)
    assert tuple(read_image(path, 8)[0, 0]) == (200, 0, 0)
    bgra16 = np.zeros((8, 8, 4), np.uint16)
    bgra16[..., 2] = 65535  # red in BGR order
    bgra16[..., 3] = 65535
    path16 = tmp_path / "red16.png"
    assert cv2.imwrite(str(path16), bgra16)
    assert tuple(read_image(path16, 4)[0, 0]) == (255, 0, 0)


def test_missing_image_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nothing.png: image file does not exist"):
        read_image(tmp_path / "nothing.png", 8)


def test_mask_is_nearest_resized_and_binary(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    mask[0, 0] = 100  # below the threshold: stays 0
    path = write_png(tmp_path / "m_mask.png", mask)
    small = read_mask(path, 16)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1}
    assert small[:, :8].sum() == 0 and small[:, 8:].min() == 1
    big = read_mask(path, 128)
    assert set(np.unique(big)) == {0, 1} and big[:, 64:].all() and not big[:, :64].any()


def test_good_images_get_empty_masks(root: Path) -> None:
    files = list_category(root, "bottle")
    good = next(s for s in files.test if s.label == 0)
    empty = read_mask(good.mask_path, 24)
    assert empty.shape == (24, 24) and empty.dtype == np.uint8 and not empty.any()
    defect = next(s for s in files.test if s.label == 1)
    assert read_mask(defect.mask_path, 32).sum() == 8 * 8  # make_category marks [8:16, 8:16]


def test_hidden_and_non_image_files_are_ignored(root: Path) -> None:
    (root / "bottle" / "train" / "good" / ".DS_Store").write_bytes(b"junk")
    (root / "bottle" / "train" / "good" / "notes.txt").write_text("hello")
    (root / ".cache").mkdir()
    assert len(list_category(root, "bottle").train) == 3
    assert check_layout(root) == []
