"""The dataset as a sweep sees it: its fingerprint, the memory-pool cap it implies, generation on demand,
and the pre-flight check a sweep passes before any Ray work.

The fingerprint (a hash of every file's relative path and size under ``<root>/<category>``) is logged
as an MLflow tag on every trial, so two runs with the same params but different data never look
comparable. Sizes, not contents, keep it fast on a network share; a re-encoded image of the same
size is the blind spot.

The pre-flight (:func:`preflight_dataset`) decodes every file a trial reads (all of ``train/good``,
memory and validation images included, the test images and their masks) in a thread pool, so a
corrupt file stops the sweep with one line naming it instead of failing every attempt of every
trial. A category that passed is remembered under the cache folder by its fingerprint plus the files'
modification times (so a file rewritten in place at the same size is decoded again); only successes
are cached, so a fixed file is always checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from memseg.config import MemSegConfig
from memseg.data.mvtec import CategoryFiles, list_category, read_rgb
from memseg.data.splits import MIN_TRAIN_IMAGES
from memseg.data.synthetic_mvtec import generate_dataset
from memseg.errors import ConfigError, DatasetLayoutError, ImageReadError, listed
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


class DataCheckError(ConfigError):
    """The pre-flight found files a trial could not read; ``problems`` holds one line per file."""

    def __init__(self, root: str, problems: Sequence[str]) -> None:
        self.root = root
        self.problems = list(problems)
        super().__init__(f"data.root {root}: {len(self.problems)} problem(s) found before starting "
                         f"(fix or remove the files, then run again):{listed(self.problems)}")


def preflight_cache_dir() -> Path:
    """Where passed pre-flight checks are remembered: ``~/.cache/memseg/preflight`` on the driver."""
    return Path.home() / ".cache" / "memseg" / "preflight"


def preflight_dataset(
    root: str | Path, categories: Sequence[str], *, workers: int | None = None, cache_dir: Path | None = None
) -> None:
    """Check that every file the categories' trials will read is there and decodes, before any Ray work.

    Args:
        root: the dataset root.
        categories: the categories the sweep runs.
        workers: decoding threads (default: ``min(8, CPUs)``; OpenCV releases the GIL while decoding).
        cache_dir: where categories that passed are remembered (default :func:`preflight_cache_dir`;
            a folder that cannot be written only costs the cache).

    Raises:
        DataCheckError: one line per problem: a missing root or category folder, a layout problem,
            a file that does not decode.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataCheckError(str(root), [f"{root}: dataset root does not exist or is not a folder"])
    cache = cache_dir if cache_dir is not None else preflight_cache_dir()
    problems: list[str] = []
    to_decode: list[tuple[str, Path, CategoryFiles]] = []
    for category in categories:
        try:
            files = list_category(root, category)
        except DatasetLayoutError as exc:
            problems += exc.problems
            continue
        marker = cache / f"{_preflight_key(root, category)}.ok"
        if marker.is_file():
            logger.debug("%s: pre-flight passed before (%s)", category, marker)
            continue
        to_decode.append((category, marker, files))
    paths = [p for _, _, files in to_decode for p in _files_read(files)]
    if paths:
        logger.info("pre-flight: decoding %d images and masks of %d categories", len(paths), len(to_decode))
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            bad = {path: msg for path, msg in zip(paths, pool.map(_decode_problem, paths), strict=True) if msg}
        problems += [bad[p] for p in sorted(bad)]
        for category, marker, files in to_decode:
            if not any(p in bad for p in _files_read(files)):
                _remember(marker, category)
    if problems:
        raise DataCheckError(str(root), problems)


def _files_read(files: CategoryFiles) -> list[Path]:
    """Every file a trial decodes: ``train/good`` (memory, validation and training), test images, masks."""
    out = [s.path for s in files.train]
    for s in files.test:
        out.append(s.path)
        if s.mask_path is not None:
            out.append(s.mask_path)
    return out


def _decode_problem(path: Path) -> str | None:
    try:
        read_rgb(path)
    except ImageReadError as exc:
        return str(exc)
    return None


def _preflight_key(root: Path, category: str) -> str:
    """The category's fingerprint plus a hash of its files' modification times and its absolute path."""
    digest = hashlib.sha256(f"{root / category}\n".encode())
    for dirpath, dirnames, filenames in os.walk(root / category):
        dirnames.sort()
        for name in sorted(filenames):
            digest.update(f"{name}\0{os.stat(os.path.join(dirpath, name)).st_mtime_ns}\n".encode())
    return f"{category}-{dataset_fingerprint(root, category)}-{digest.hexdigest()[:16]}"


def _remember(marker: Path, category: str) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{category}\n")
    except OSError as exc:  # a read-only home only costs the cache
        logger.debug("pre-flight cache not written (%s): %s", marker, exc)


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
