"""The dataset as a sweep sees it: its fingerprint, the memory-pool cap it implies, and generation on demand.

The fingerprint (a hash of every file's relative path and size under ``<root>/<category>``) is logged
as an MLflow tag on every trial, so two runs with the same params but different data never look
comparable. Sizes, not contents, keep it fast on a network share; a re-encoded image of the same
size is the blind spot.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from memseg.config import MemSegConfig
from memseg.data.mvtec import list_category
from memseg.data.splits import MIN_TRAIN_IMAGES
from memseg.data.synthetic_mvtec import generate_dataset
from memseg.errors import ConfigError
from sweeps.search_space import max_memory_size

logger = logging.getLogger(__name__)


def dataset_fingerprint(root: str | Path, category: str) -> str:
    """``sha256`` (first 16 hex digits) of the sorted ``(relative path, size)`` list under ``root/category``.

    Raises:
        ConfigError: when the category folder does not exist.
    """
    folder = Path(root) / category
    if not folder.is_dir():
        raise ConfigError(f"data.root: {folder} does not exist")
    digest = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            entries.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    for rel, size in sorted(entries):
        digest.update(f"{rel}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def memory_pool_limit(root: str | Path, cfg: MemSegConfig) -> int:
    """The largest ``model.memory_size`` the category's ``train/good`` allows with ``cfg``'s validation split."""
    files = list_category(root, cfg.data.category)
    try:
        return max_memory_size(len(files.train), cfg.data.val_fraction, cfg.data.val_min_images, MIN_TRAIN_IMAGES)
    except ConfigError as exc:
        raise ConfigError(f"category {cfg.data.category!r} at {root}: {exc}") from None


def ensure_dataset(
    root: Path,
    categories: Sequence[str],
    *,
    size: int,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    seed: int,
) -> bool:
    """Generate the synthetic MVTec-layout dataset at ``root`` for the categories missing there.

    Returns:
        True when something was generated.
    """
    missing = [c for c in categories if not (root / c / "train" / "good").is_dir()]
    if not missing:
        return False
    logger.info("generating a synthetic dataset for %d categories at %s", len(missing), root)
    generate_dataset(
        root, size=size, categories=tuple(missing), n_train=n_train, n_test_good=n_test_good,
        n_test_defect=n_test_defect, seed=seed,
    )
    return True
