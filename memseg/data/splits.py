"""Memory / training / validation split of ``train/good`` (docs/model.md, "Validation and selection").

The authors hold the N memory images out of training: the first N by filename
(``model.memory_selection=first``) or a seeded draw (``random``). A validation split is then drawn
(seeded) from the rest; it gets fixed-seed synthetic anomalies so that checkpoints are chosen
without ever looking at the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memseg.data.mvtec import CategoryFiles, Sample
from memseg.errors import ConfigError

MIN_TRAIN_IMAGES = 2


@dataclass(frozen=True)
class Splits:
    """Disjoint subsets of ``train/good``, each in filename order."""

    memory: list[Sample]
    train: list[Sample]
    val: list[Sample]


def make_splits(
    files: CategoryFiles,
    memory_size: int,
    memory_selection: str,
    val_fraction: float,
    val_min_images: int,
    seed: int,
) -> Splits:
    """Split ``train/good`` into memory, training and validation images.

    Args:
        files: The listed category.
        memory_size: N memory images, held out of training.
        memory_selection: ``"first"`` (first N by filename, the authors' choice) or ``"random"`` (seeded).
        val_fraction: Share of the images left after the memory that is held out for validation.
        val_min_images: Validation gets at least this many images whatever the fraction.
        seed: Seed of the ``random`` memory draw and of the validation draw.

    Raises:
        ConfigError: naming the category, the counts and the config keys when fewer than
            ``MIN_TRAIN_IMAGES`` training images would remain, or for an unknown selection.
    """
    if memory_selection not in ("first", "random"):
        msg = f"model.memory_selection: must be 'first' or 'random', got {memory_selection!r}"
        raise ConfigError(msg)
    if memory_size < 1:
        msg = f"model.memory_size: must be >= 1, got {memory_size}"
        raise ConfigError(msg)
    pool = sorted(files.train, key=lambda s: s.path.name)
    n_total = len(pool)
    n_rest = n_total - memory_size
    n_val = max(val_min_images, round(val_fraction * max(n_rest, 0)))
    if n_rest - n_val < MIN_TRAIN_IMAGES:
        msg = (
            f"category {files.category!r} has {n_total} train/good images: model.memory_size={memory_size} "
            f"memory + {n_val} validation (data.val_fraction={val_fraction}, data.val_min_images="
            f"{val_min_images}) leave {max(n_rest - n_val, 0)} training image(s), need >= {MIN_TRAIN_IMAGES}"
        )
        raise ConfigError(msg)
    # Independent streams, so that switching the memory selection does not reshuffle the validation draw's RNG.
    memory_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if memory_selection == "first":
        memory_idx = set(range(memory_size))
    else:
        memory_idx = {int(i) for i in memory_rng.choice(n_total, size=memory_size, replace=False)}
    rest = [i for i in range(n_total) if i not in memory_idx]
    val_idx = {rest[int(i)] for i in val_rng.choice(len(rest), size=n_val, replace=False)}
    return Splits(
        memory=[pool[i] for i in sorted(memory_idx)],
        train=[pool[i] for i in rest if i not in val_idx],
        val=[pool[i] for i in sorted(val_idx)],
    )
