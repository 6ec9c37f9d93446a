"""Writing a generated dataset in the MVTec AD layout: what every generator of ours shares.

The generated dataset (:mod:`memseg.data.synthetic_mvtec`) and the realistic benchmark
(:mod:`memseg.data.surface_photos`) differ only in how they draw an image; the argument checks, the
refusal to overwrite someone else's data, the folder layout, the file names and the PNG writing are
these functions. Every image gets its own generator seeded from ``(seed, category, split, index)``,
so a file does not depend on which other categories or counts were written.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from memseg.errors import ConfigError, DatasetLayoutError

SPLIT_IDS = {"train": 0, "test_good": 1, "test_defect": 2, "donor": 3}
"""The third seed word of an image's generator: which part of a category it belongs to."""

GoodImage = Callable[[np.random.Generator], np.ndarray]
"""Draws one defect-free image (uint8, HxW or HxWx3 RGB) from its own generator."""
DefectImage = Callable[[str, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
"""Draws one defective image and its {0,1} mask: (defect type, index in the category, generator)."""


def check_request(
    categories: Sequence[str], known: Sequence[str], what: str, size: int, counts: dict[str, int]
) -> None:
    """Refuse unknown categories, a size below 32 px and counts below 1, naming the argument.

    Raises:
        ConfigError: naming ``categories``, ``size`` or the count.
    """
    unknown = [c for c in categories if c not in known]
    if unknown:
        msg = f"categories: unknown {unknown}; {what}: {', '.join(known)}"
        raise ConfigError(msg)
    if size < 32:
        msg = f"size: must be >= 32, got {size}"
        raise ConfigError(msg)
    for name, value in counts.items():
        if value < 1:
            msg = f"{name}: must be >= 1, got {value}"
            raise ConfigError(msg)


def refuse_foreign(out: Path, categories: Sequence[str], marker: str) -> None:
    """Never overwrite a category folder that a generator with ``marker`` in readme.txt did not write.

    Raises:
        DatasetLayoutError: ``out`` holds one of ``categories`` without our marker.
    """
    readme = out / "readme.txt"
    ours = readme.is_file() and marker in readme.read_text(errors="replace")
    clashing = [c for c in categories if (out / c).exists()]
    if clashing and not ours:
        msg = f"{out}: holds {clashing} but was not written by this generator (no {marker!r} in readme.txt)"
        raise DatasetLayoutError(str(out), [f"{msg}; refusing to overwrite, choose another --out"])


def image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image, category and count."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), SPLIT_IDS[split], index])


def write_category(
    out: Path,
    category: str,
    *,
    seed: int,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    defects: Sequence[str],
    good: GoodImage,
    defective: DefectImage,
) -> dict[str, int]:
    """(Re)write ``out/category`` in the MVTec layout and return the defective images per type.

    ``train/good`` and ``test/good`` images come from ``good``; defective images are dealt in turn
    to ``defects`` and come from ``defective`` with their masks (``ground_truth/<type>/NNN_mask.png``,
    0/255).
    """
    cat_dir = out / category
    if cat_dir.exists():
        shutil.rmtree(cat_dir)
    for split, folder, count in (("train", "train/good", n_train), ("test_good", "test/good", n_test_good)):
        (cat_dir / folder).mkdir(parents=True)
        for i in range(count):
            write_png(cat_dir / folder / f"{i:03d}.png", good(image_rng(seed, category, split, i)))
    per_type = dict.fromkeys(defects, 0)
    for i in range(n_test_defect):
        kind = defects[i % len(defects)]
        image, mask = defective(kind, i, image_rng(seed, category, "test_defect", i))
        name = f"{per_type[kind]:03d}"
        per_type[kind] += 1
        (cat_dir / "test" / kind).mkdir(parents=True, exist_ok=True)
        (cat_dir / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        write_png(cat_dir / "test" / kind / f"{name}.png", image)
        write_png(cat_dir / "ground_truth" / kind / f"{name}_mask.png", mask.astype(np.uint8) * 255)
    return per_type


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB (or single-channel) uint8 image as PNG.

    Raises:
        OSError: naming the file when OpenCV cannot write it.
    """
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        msg = f"{path}: could not write image"
        raise OSError(msg)
