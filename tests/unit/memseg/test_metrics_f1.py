"""F1-max against scikit-learn's precision-recall curve."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve

from memseg.metrics import f1_max, f1_max_threshold


def _sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_f1_max_equals_sklearn(dtype: type) -> None:
    rng = np.random.default_rng(3)
    for _ in range(25):
        n = int(rng.integers(2, 300))
        labels = rng.random(n) < 0.3
        if not labels.any():
            continue
        scores = (np.round(rng.random(n), 1) + labels * rng.uniform(0, 0.5)).astype(dtype)
        assert f1_max(labels, scores) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_reaches_the_reported_f1(dtype: type) -> None:
    rng = np.random.default_rng(4)
    labels = rng.random(500) < 0.2
    scores = (rng.random(500) + labels * 0.4 - 0.5).astype(dtype)  # negative thresholds too
    best, threshold = f1_max_threshold(labels, scores)
    assert f1_score(labels, scores >= threshold) == pytest.approx(best, abs=1e-12)
    assert 0.0 < best < 1.0
    assert threshold in scores  # an actual score, recovered exactly from the sort keys


def test_perfect_separation_and_no_positive() -> None:
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert f1_max([1, 1], [0.5, 0.5]) == 1.0  # only positives: defined
    with pytest.raises(ValueError, match="no anomalous samples"):
        f1_max([0, 0, 0], [0.1, 0.2, 0.3])
