"""MVTec AD reader: the official folder layout, its check, and image/mask decoding.

Layout of one category (``<root>/<category>/``)::

    train/good/000.png ...                      normal images only
    test/good/000.png ...                       normal test images, no masks
    test/<defect_type>/000.png ...              anomalous test images
    ground_truth/<defect_type>/000_mask.png     binary 0/255 mask, same size as its image

Any category name works (the 15 official ones and custom ones in the same layout).
:func:`list_category` does the cheap checks (folders and file names) and raises
:class:`~memseg.errors.DatasetLayoutError` listing every problem; :func:`check_layout` also
decodes every image and mask (corrupt files, size mismatches, non-binary masks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from memseg.errors import DatasetLayoutError, ImageReadError

GOOD = "good"
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MASK_SUFFIX = "_mask.png"
# A mask is "binary-ish" when at most this share of its pixels lies strictly between the two levels
# (0 < v < 255): resampled masks have a thin anti-aliased rim, real ones none.
_MAX_GREY_MASK_FRACTION = 0.05


@dataclass(frozen=True)
class Sample:
    """One image of a category.

    Attributes:
        path: The image file.
        label: 0 = normal, 1 = anomalous.
        defect_type: ``"good"`` or the name of the ``test/<defect_type>`` folder.
        mask_path: The ground-truth mask, ``None`` for normal images.
    """

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None


@dataclass(frozen=True)
class CategoryFiles:
    """The files of one category: ``train`` = ``train/good`` sorted by filename, ``test`` = good then defects."""

    root: Path
    category: str
    train: list[Sample]
    test: list[Sample]

    @property
    def defect_types(self) -> list[str]:
        """The anomalous ``test/<defect_type>`` folder names, sorted."""
        return sorted({s.defect_type for s in self.test if s.label == 1})


def mask_path_for(image_path: Path) -> Path:
    """``<cat>/test/<defect>/000.png`` -> ``<cat>/ground_truth/<defect>/000_mask.png``."""
    defect_dir = image_path.parent
    return defect_dir.parent.parent / "ground_truth" / defect_dir.name / f"{image_path.stem}{MASK_SUFFIX}"


def list_category(root: str | Path, category: str) -> CategoryFiles:
    """List the train and test samples of one category, checking the folder layout (no decoding).

    Raises:
        DatasetLayoutError: listing every missing folder, empty ``train/good`` and test image
            without its ``_mask.png``.
    """
    files, problems = _scan(Path(root), category)
    if problems or files is None:
        raise DatasetLayoutError(str(root), problems)
    return files


def check_layout(root: str | Path, categories: Iterable[str] | None = None, *, decode: bool = True) -> list[str]:
    """Every problem of a dataset root, one human-readable line each naming the path; ``[]`` when fine.

    Args:
        root: The dataset root holding one folder per category.
        categories: The categories that must be there; ``None`` = every (non-hidden) folder under root.
        decode: Also decode each image and mask: corrupt files, mask size differing from its image,
            masks that are not binary.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: dataset root does not exist or is not a folder"]
    if categories is None:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            return [f"{root}: no category folders (expected <root>/<category>/train/good/*.png)"]
    else:
        names = list(categories)
    problems: list[str] = []
    for category in names:
        files, found = _scan(root, category)
        problems += found
        if files is not None:
            problems += _orphan_masks(files)
            if decode:
                problems += _decode_problems(files)
    return problems


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image at its own size as uint8 RGB ``(H, W, 3)``.

    Grayscale becomes three equal channels, 16-bit is scaled to 8-bit and an alpha channel is dropped.

    Raises:
        ImageReadError: naming the file when it is missing or cannot be decoded.
    """
    raw = _decode(Path(path))
    if raw.ndim == 2:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    if raw.shape[2] == 1:
        return cv2.cvtColor(raw[:, :, 0], cv2.COLOR_GRAY2RGB)
    if raw.shape[2] == 4:
        return cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``(size, size)``: the one policy for training, evaluation and inference alike."""
    if rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(rgb)
    # INTER_AREA averages when shrinking (no aliasing); it degenerates to blocky output when enlarging.
    shrink = rgb.shape[0] >= size and rgb.shape[1] >= size
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_rgb_u8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` grayscale, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA uint8 -> ``(H, W, 3)`` RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        msg = f"images must be uint8, got {image.dtype}"
        raise ValueError(msg)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    msg = f"images must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}"
    raise ValueError(msg)


def read_image(path: str | Path, size: int) -> np.ndarray:
    """Decode an image as RGB (:func:`read_rgb`) and resize it to a square (:func:`resize_square`).

    Returns:
        uint8 array ``(size, size, 3)``, RGB.

    Raises:
        ImageReadError: naming the file when it is missing or cannot be decoded.
    """
    return resize_square(read_rgb(path), size)


def read_mask(path: str | Path | None, size: int) -> np.ndarray:
    """Decode a ground-truth mask, resized with nearest neighbour and binarised at > 127.

    Returns:
        uint8 array ``(size, size)`` with values in {0, 1}; all zeros when ``path`` is ``None``.

    Raises:
        ImageReadError: naming the file when it is missing or cannot be decoded.
    """
    if path is None:
        return np.zeros((size, size), np.uint8)
    raw = _decode(Path(path))
    if raw.ndim == 3:
        raw = raw.max(axis=2)  # any lit channel counts; masks are normally single-channel already
    if raw.shape != (size, size):
        raw = cv2.resize(raw, (size, size), interpolation=cv2.INTER_NEAREST)
    return (raw > 127).astype(np.uint8)


def _decode(path: Path) -> np.ndarray:
    """Decode with IMREAD_UNCHANGED (keeps grayscale single-channel) and bring 16-bit down to 8-bit."""
    if not path.is_file():
        msg = f"{path}: image file does not exist"
        raise ImageReadError(msg)
    raw: np.ndarray | None = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        msg = f"{path}: cannot decode image (unreadable or corrupt file)"
        raise ImageReadError(msg)
    if raw.dtype == np.uint16:
        raw = (raw >> 8).astype(np.uint8)
    elif raw.dtype != np.uint8:
        raw = cv2.normalize(raw, np.empty_like(raw), 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return raw


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _scan(root: Path, category: str) -> tuple[CategoryFiles | None, list[str]]:
    """Folder and file-name checks of one category; the files are ``None`` when the folder is missing."""
    if not root.is_dir():
        return None, [f"{root}: dataset root does not exist or is not a folder"]
    cat_dir = root / category
    if not cat_dir.is_dir():
        return None, [f"{cat_dir}: category folder is missing{_nested_hint(root, category)}"]
    problems: list[str] = []
    train_dir, test_dir = cat_dir / "train" / GOOD, cat_dir / "test"
    train: list[Sample] = []
    if not train_dir.is_dir():
        loose = (cat_dir / "train").is_dir() and _images_in(cat_dir / "train")
        hint = " (images found directly in train/: move them to train/good/)" if loose else ""
        problems.append(f"{train_dir}: folder is missing{hint}")
    else:
        train = [Sample(p, 0, GOOD, None) for p in _images_in(train_dir)]
        if not train:
            problems.append(f"{train_dir}: no images (expected *.png)")
    test: list[Sample] = []
    if not test_dir.is_dir():
        problems.append(f"{test_dir}: folder is missing")
    else:
        defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = _images_in(test_dir)
        if loose:
            problems.append(f"{test_dir}: {len(loose)} image(s) directly in test/ (expected test/<defect_type>/)")
        # Both kinds are needed: image AUROC compares normal with defective test images.
        if not any(d.name == GOOD for d in defect_dirs):
            problems.append(f"{test_dir / GOOD}: folder is missing (normal test images)")
        if not any(d.name != GOOD for d in defect_dirs):
            problems.append(f"{test_dir}: no test/<defect_type>/ folders besides good/")
        for d in (p for p in defect_dirs if p.name == GOOD):
            test += [Sample(p, 0, GOOD, None) for p in _images_in(d)]
        for d in (p for p in defect_dirs if p.name != GOOD):
            for p in _images_in(d):
                mask = mask_path_for(p)
                if not mask.is_file():
                    problems.append(f"{p}: test image has no mask {mask}")
                test.append(Sample(p, 1, d.name, mask))
    # Partial listings are returned with the problems so that check_layout can still decode the rest.
    return CategoryFiles(root=root, category=category, train=train, test=test), problems


def _nested_hint(root: Path, category: str) -> str:
    """Point at ``root/<sub>/<category>`` when the archive was extracted one level too deep."""
    try:
        nested = [p for p in root.iterdir() if p.is_dir() and (p / category).is_dir()]
    except OSError:
        return ""
    return f" (found {nested[0] / category}: use --root {nested[0]})" if nested else ""


def _orphan_masks(files: CategoryFiles) -> list[str]:
    expected = {s.mask_path for s in files.test if s.mask_path is not None}
    gt_dir = files.root / files.category / "ground_truth"
    if not gt_dir.is_dir():
        return []
    return [
        f"{m}: mask has no test image (expected {m.parent.parent.parent / 'test' / m.parent.name}/"
        f"{m.name.removesuffix(MASK_SUFFIX)}.<ext>)"
        for m in sorted(gt_dir.glob(f"*/*{MASK_SUFFIX}"))
        if m not in expected
    ]


def _decode_problems(files: CategoryFiles) -> list[str]:
    problems: list[str] = []
    for sample in [*files.train, *files.test]:
        try:
            image = _decode(sample.path)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        if sample.mask_path is None or not sample.mask_path.is_file():
            continue  # a missing mask is already reported by _scan
        try:
            mask = _decode(sample.mask_path)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        if mask.shape[:2] != image.shape[:2]:
            problems.append(
                f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{sample.path.name} is {image.shape[1]}x{image.shape[0]}"
            )
        grey = mask.max(axis=2) if mask.ndim == 3 else mask
        grey_fraction = float(np.count_nonzero((grey > 0) & (grey < 255))) / grey.size
        if grey_fraction > _MAX_GREY_MASK_FRACTION:
            problems.append(
                f"{sample.mask_path}: mask is not binary ({grey_fraction:.0%} of pixels are neither 0 nor 255)"
            )
    return problems
