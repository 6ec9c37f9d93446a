"""Memory / train / validation splits of train/good: held out, disjoint, seeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from memseg.data.mvtec import CategoryFiles, Sample
from memseg.data.splits import make_splits
from memseg.errors import ConfigError


def _files(n: int, category: str = "toothbrush") -> CategoryFiles:
    # Listed out of order on purpose: the split must sort by filename itself.
    train = [Sample(Path(f"/d/{category}/train/good/{i:03d}.png"), 0, "good", None) for i in reversed(range(n))]
    return CategoryFiles(root=Path("/d"), category=category, train=train, test=[])


def _names(samples: list[Sample]) -> list[str]:
    return [s.path.stem for s in samples]


def test_first_memory_images_are_held_out_of_train_and_val() -> None:
    splits = make_splits(_files(60), 10, "first", 0.1, 4, seed=3)
    assert _names(splits.memory) == [f"{i:03d}" for i in range(10)]
    memory = set(_names(splits.memory))
    assert not memory & set(_names(splits.train)) and not memory & set(_names(splits.val))
    assert not set(_names(splits.train)) & set(_names(splits.val))
    assert len(splits.val) == 5  # round(0.1 * 50)
    assert len(splits.train) == 45
    assert len(splits.memory) + len(splits.train) + len(splits.val) == 60
    assert _names(splits.train) == sorted(_names(splits.train))


def test_validation_has_at_least_the_minimum() -> None:
    splits = make_splits(_files(30), 5, "first", 0.0, 4, seed=0)
    assert len(splits.val) == 4 and len(splits.train) == 21


def test_splits_repeat_for_a_seed_and_change_with_it() -> None:
    a = make_splits(_files(60), 10, "first", 0.2, 4, seed=1)
    b = make_splits(_files(60), 10, "first", 0.2, 4, seed=1)
    assert a == b
    vals = {tuple(_names(make_splits(_files(60), 10, "first", 0.2, 4, seed=s).val)) for s in range(5)}
    assert len(vals) > 1


def test_validation_is_a_draw_not_the_next_images() -> None:
    splits = make_splits(_files(60), 10, "first", 0.2, 4, seed=0)
    assert _names(splits.val) != [f"{i:03d}" for i in range(10, 20)]


def test_random_memory_selection_is_seeded_and_disjoint() -> None:
    a = make_splits(_files(60), 10, "random", 0.1, 4, seed=7)
    b = make_splits(_files(60), 10, "random", 0.1, 4, seed=7)
    assert a == b and len(a.memory) == 10
    assert _names(a.memory) != [f"{i:03d}" for i in range(10)]
    everything = _names(a.memory) + _names(a.train) + _names(a.val)
    assert sorted(everything) == [f"{i:03d}" for i in range(60)]


def test_too_few_training_images_is_an_error_naming_the_numbers() -> None:
    with pytest.raises(ConfigError) as info:
        make_splits(_files(60), 55, "first", 0.1, 4, seed=0)
    text = str(info.value)
    assert "'toothbrush'" in text and "60 train/good" in text and "model.memory_size=55" in text
    assert "4 validation" in text and "leave 1 training" in text
    # the boundary: exactly two training images is fine
    ok = make_splits(_files(60), 54, "first", 0.1, 4, seed=0)
    assert len(ok.train) == 2


def test_bad_memory_selection_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.memory_selection"):
        make_splits(_files(20), 5, "kmeans", 0.1, 2, seed=0)
