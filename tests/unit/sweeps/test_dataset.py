"""Dataset fingerprint and the memory-pool cap, on a generated dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from memseg.config import MemSegConfig
from memseg.errors import ConfigError
from sweeps.dataset import dataset_fingerprint, ensure_dataset, memory_pool_limit


def test_fingerprint_is_stable_and_sees_changes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    assert ensure_dataset(root, ["bottle"], size=32, n_train=6, n_test_good=1, n_test_defect=1, seed=0)
    assert not ensure_dataset(root, ["bottle"], size=32, n_train=6, n_test_good=1, n_test_defect=1, seed=0)
    first = dataset_fingerprint(root, "bottle")
    assert first == dataset_fingerprint(root, "bottle") and len(first) == 16
    extra = root / "bottle" / "train" / "good" / "zzz.png"
    extra.write_bytes(b"123")
    second = dataset_fingerprint(root, "bottle")
    assert second != first
    extra.write_bytes(b"1234")
    assert dataset_fingerprint(root, "bottle") != second
    with pytest.raises(ConfigError, match="does not exist"):
        dataset_fingerprint(root, "carpet")


def test_memory_pool_limit_follows_the_validation_split(synthetic_root: Path) -> None:
    # 24 train/good images; validation >= 4 -> 24 - N - max(4, round(0.1 (24 - N))) >= 2 -> N <= 18
    cfg = MemSegConfig().with_overrides({"data.category": "bottle"})
    assert memory_pool_limit(synthetic_root, cfg) == 18
    cfg = cfg.with_overrides({"data.val_min_images": 2, "data.val_fraction": 0.0})
    assert memory_pool_limit(synthetic_root, cfg) == 20
