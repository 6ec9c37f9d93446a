"""Top-k image scores and compute_metrics (keys, per defect type, undefined metrics left out)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from memseg.metrics import aupro, compute_metrics, f1_max, image_auroc, image_scores, keys, pixel_auroc


def test_image_scores_is_mean_of_top_k() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((4, 16, 16)).astype(np.float32)
    expected = np.sort(maps.reshape(4, -1), axis=1)[:, -10:].mean(axis=1)
    np.testing.assert_allclose(image_scores(maps, 10), expected, rtol=1e-6)
    np.testing.assert_allclose(image_scores(torch.from_numpy(maps), 10), expected, rtol=1e-6)
    np.testing.assert_allclose(image_scores(maps, 1), maps.reshape(4, -1).max(axis=1), rtol=0)
    # top_k larger than the map: the mean of the whole map
    np.testing.assert_allclose(image_scores(maps, 10_000), maps.reshape(4, -1).mean(axis=1), rtol=1e-6)


def test_image_scores_small_bright_spot_beats_diffuse_noise() -> None:
    maps = np.full((2, 32, 32), 0.1, dtype=np.float32)
    maps[0, 4:14, 4:14] = 0.9  # 100 bright pixels
    maps[1] += 0.2  # a uniformly brighter image
    scores = image_scores(maps, 100)
    assert scores[0] == pytest.approx(0.9)
    assert scores[1] == pytest.approx(0.3)


@pytest.mark.parametrize("top_k", [0, -3, 2.5, True])
def test_image_scores_rejects_bad_top_k(top_k: object) -> None:
    with pytest.raises(ValueError, match="top_k"):
        image_scores(np.zeros((1, 4, 4)), top_k)  # type: ignore[arg-type]


def _test_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    types = ["good"] * 6 + ["scratch"] * 4 + ["hole"] * 5
    n = len(types)
    masks = np.zeros((n, 32, 32), dtype=np.uint8)
    for i, t in enumerate(types):
        if t != "good":
            y, x = rng.integers(0, 26, 2)
            masks[i, y : y + 6, x : x + (2 if t == "scratch" else 5)] = 1
    maps = (0.5 * rng.random(masks.shape) + 0.45 * masks * rng.random(masks.shape)).astype(np.float32)
    labels = np.array([t != "good" for t in types], dtype=int)
    return maps, masks, labels, types


def test_compute_metrics_overall_values_and_keys() -> None:
    maps, masks, labels, types = _test_set()
    metrics = compute_metrics(maps, masks, labels, types, top_k=20, fpr_limit=0.3)
    scores = image_scores(maps, 20)
    assert metrics[keys.IMAGE_AUROC] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics[keys.PIXEL_AUROC] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert metrics[keys.PIXEL_AUPRO] == pytest.approx(aupro(masks, maps, 0.3))
    assert metrics[keys.IMAGE_F1_MAX] == pytest.approx(f1_max(labels, scores))
    assert metrics[keys.PIXEL_F1_MAX] == pytest.approx(f1_max(masks.ravel(), maps.ravel()))
    base = {keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO, keys.IMAGE_F1_MAX, keys.PIXEL_F1_MAX}
    expected = base | {f"{k}/{t}" for k in base for t in ("scratch", "hole")}
    assert set(metrics) == expected
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.parametrize("defect", ["scratch", "hole"])
def test_per_defect_type_uses_good_plus_that_type(defect: str) -> None:
    maps, masks, labels, types = _test_set(1)
    metrics = compute_metrics(maps, masks, labels, types, top_k=20, fpr_limit=0.3)
    keep = np.array([t in ("good", defect) for t in types])
    sub_scores = image_scores(maps[keep], 20)
    assert metrics[f"{keys.IMAGE_AUROC}/{defect}"] == pytest.approx(image_auroc(labels[keep], sub_scores))
    assert metrics[f"{keys.PIXEL_AUROC}/{defect}"] == pytest.approx(pixel_auroc(masks[keep], maps[keep]))
    assert metrics[f"{keys.PIXEL_AUPRO}/{defect}"] == pytest.approx(aupro(masks[keep], maps[keep], 0.3))
    assert metrics[f"{keys.PIXEL_F1_MAX}/{defect}"] == pytest.approx(f1_max(masks[keep].ravel(), maps[keep].ravel()))
    assert metrics[f"{keys.PIXEL_AUROC}/{defect}"] != pytest.approx(metrics[keys.PIXEL_AUROC], abs=1e-9)


def test_undefined_metrics_are_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    maps, masks, _, _ = _test_set(2)
    good = np.zeros(len(maps), dtype=int)  # a custom test set of normal images only
    with caplog.at_level(logging.WARNING, logger="memseg.metrics.scoring"):
        metrics = compute_metrics(maps, np.zeros_like(masks), good, top_k=5, fpr_limit=0.3)
    assert metrics == {}
    assert "image_auroc left out: ROC AUC is undefined: only normal" in caplog.text
    assert "pixel_aupro left out" in caplog.text

    # Anomalous images without any mask pixel: the image metrics stay, the pixel ones go.
    maps, masks, labels, types = _test_set(3)
    metrics = compute_metrics(maps, np.zeros_like(masks), labels, types, top_k=5, fpr_limit=0.3)
    assert keys.IMAGE_AUROC in metrics and f"{keys.IMAGE_AUROC}/hole" in metrics
    assert not any(k.startswith(("pixel_",)) for k in metrics)


def test_compute_metrics_checks_lengths() -> None:
    maps, masks, labels, types = _test_set()
    with pytest.raises(ValueError, match="labels for"):
        compute_metrics(maps, masks, labels[:-1], top_k=5, fpr_limit=0.3)
    with pytest.raises(ValueError, match="defect types for"):
        compute_metrics(maps, masks, labels, types[:-1], top_k=5, fpr_limit=0.3)
