"""ROC AUC against scikit-learn: ties, dtypes, degenerate inputs, pixel level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from memseg.metrics import image_auroc, pixel_auroc


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int64, np.float16])
def test_image_auroc_equals_sklearn_with_ties(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 400))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            continue
        if np.dtype(dtype).kind == "u":
            scores = rng.integers(0, 6, n)  # heavy ties
        elif np.dtype(dtype).kind == "i":
            scores = rng.integers(-5, 6, n)
        else:
            scores = rng.integers(-8, 9, n) * 0.25 + (rng.random(n) < 0.3) * rng.random(n)
        scores = scores.astype(dtype)
        assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_perfect_inverted_and_constant_scores() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    assert image_auroc(labels, labels * 2.0 + 1) == 1.0
    assert image_auroc(labels, -labels.astype(float)) == 0.0
    assert image_auroc(labels, np.full(6, 0.3)) == 0.5


def test_float64_values_that_tie_in_float32_stay_distinct() -> None:
    labels = np.array([0, 1])
    scores = np.array([1.0, 1.0 + 1e-12])  # equal once cast to float32
    assert image_auroc(labels, scores) == 1.0


def test_negative_zero_ties_with_zero() -> None:
    labels = np.array([0, 1, 0, 1])
    scores = np.array([-0.0, 0.0, -1.0, 2.0], dtype=np.float32)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc(labels, scores) == pytest.approx(0.875)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_raises_clear_error(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="undefined: only (normal|anomalous)"):
        image_auroc(labels, [0.1, 0.5, 0.9])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_auroc([0, 1], [0.1, np.inf])
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_pixel_auroc_equals_sklearn_on_masks_and_maps() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 32, 32), dtype=np.uint8)
    masks[0, 4:12, 5:9] = 1
    masks[3, 20:30, 1:4] = 1
    masks[4, 0:3, 0:32] = 1
    maps = (rng.random(masks.shape) * 0.7 + masks * 0.3).astype(np.float32)
    maps = np.round(maps, 2)  # ties across classes
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(masks * 255, maps) == pytest.approx(expected, abs=1e-12)  # {0, 255} masks
    assert pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_without_anomalous_pixel_raises() -> None:
    with pytest.raises(ValueError, match="pixel AUROC.*only normal"):
        pixel_auroc(np.zeros((2, 8, 8)), np.random.default_rng(0).random((2, 8, 8)))
