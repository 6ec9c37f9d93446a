"""Image scores and the full metric set of one evaluation, overall and per defect type.

Image score: the mean of the ``top_k`` highest pixels of the anomaly map (the paper and the authors' code: top 100).
:func:`compute_metrics` ranks all pixels ONCE (one sort, region ids as payload) and derives pixel
AUROC, pixel F1-max and AUPRO from that ranking, overall and for every defect type's subset
(subsets keep the global order, so they need no new sort).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from memseg.metrics import keys
from memseg.metrics.aupro import Regions, as_mask_stack, check_fpr_limit, integrate_to, label_regions, pro_curve
from memseg.metrics.auroc import Ranking, auc_from_counts, check_binary, rank, roc_counts
from memseg.metrics.f1 import f1_from_ranking

logger = logging.getLogger(__name__)

GOOD = "good"


def image_scores(maps: Any, top_k: int) -> np.ndarray:
    """Image anomaly score: mean of the ``top_k`` largest pixel scores of each map.

    Args:
        maps: (B, H, W) anomaly maps, NumPy array or torch tensor (any device).
        top_k: number of pixels averaged; capped at H * W.

    Returns:
        (B,) float64 scores.
    """
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
        msg = f"top_k must be a positive integer, got {top_k!r}"
        raise ValueError(msg)
    if hasattr(maps, "topk") and hasattr(maps, "flatten"):  # a torch tensor: stay on its device
        if maps.ndim < 2:
            msg = f"maps must have shape (B, H, W), got {tuple(maps.shape)}"
            raise ValueError(msg)
        flat = maps.detach().flatten(1)
        k = min(int(top_k), flat.shape[1])
        return flat.topk(k, dim=1).values.double().mean(dim=1).cpu().numpy()
    maps_np = np.asarray(maps)
    if maps_np.ndim < 2:
        msg = f"maps must have shape (B, H, W), got {maps_np.shape}"
        raise ValueError(msg)
    flat = maps_np.reshape(maps_np.shape[0], -1)
    k = min(int(top_k), flat.shape[1])
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.mean(axis=1, dtype=np.float64)


def compute_metrics(
    maps: Any,
    masks: Any,
    labels: Any,
    defect_types: Sequence[str] | None = None,
    *,
    top_k: int,
    fpr_limit: float,
) -> dict[str, float]:
    """Every metric of :mod:`memseg.metrics.keys`, overall and per defect type.

    Per defect type d, a metric is computed on the normal images plus the images of type d, and
    stored under ``f"{key}/{d}"``. A metric that is undefined on a set (one class only, no GT
    region) is left out and the reason logged, so one odd subset does not fail an evaluation.

    Args:
        maps: (N, H, W) anomaly maps in [0, 1].
        masks: (N, H, W) ground truth, > 0.5 = anomalous.
        labels: (N,) 1 = anomalous image, 0 = normal.
        defect_types: (N,) defect type names (``"good"`` for normal images), or None for overall only.
        top_k: pixels averaged into the image score.
        fpr_limit: AUPRO integration limit.

    Returns:
        ``{"image_auroc": ..., "pixel_auroc": ..., "pixel_aupro": ..., "image_f1_max": ...,
        "pixel_f1_max": ..., "image_auroc/<type>": ..., ...}``.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    masks_b, maps_np = as_mask_stack(masks, maps, "compute_metrics")
    n = maps_np.shape[0]
    anomalous = check_binary(labels, "labels")
    if anomalous.size != n:
        msg = f"compute_metrics: {anomalous.size} labels for {n} maps"
        raise ValueError(msg)
    types = None
    if defect_types is not None:
        types = np.asarray([str(t) for t in defect_types], dtype=object)
        if types.size != n:
            msg = f"compute_metrics: {types.size} defect types for {n} maps"
            raise ValueError(msg)

    scores = image_scores(maps_np, top_k)
    regions = label_regions(masks_b)
    ranking = rank(maps_np, regions.ids)

    metrics: dict[str, float] = {}
    _add_metrics(metrics, "", anomalous, scores, ranking, regions, None, fpr_limit)
    if types is not None:
        pixel_image = regions.image[ranking.payload]
        for defect in sorted(set(types[anomalous]) - {GOOD}):
            images = ~anomalous | (types == defect)
            _add_metrics(
                metrics, f"/{defect}", anomalous[images], scores[images],
                ranking.subset(images[pixel_image]), regions, images, fpr_limit,
            )
    return metrics


def _add_metrics(
    out: dict[str, float],
    suffix: str,
    anomalous: np.ndarray,
    scores: np.ndarray,
    ranking: Ranking,
    regions: Regions,
    images: np.ndarray | None,
    fpr_limit: float,
) -> None:
    where = f" for defect type {suffix[1:]!r}" if suffix else ""
    image_ranking = rank(scores, anomalous)
    image_positive = image_ranking.payload.astype(bool)
    pixel_positive = regions.anomalous[ranking.payload]

    def image_auroc() -> float:
        return auc_from_counts(*roc_counts(image_ranking, image_positive)[:2])

    def pixel_auroc() -> float:
        return auc_from_counts(*roc_counts(ranking, pixel_positive)[:2])

    def pixel_aupro() -> float:
        fpr, pro = pro_curve(ranking, regions, regions.count_anomalous(images))
        return integrate_to(fpr, pro, fpr_limit)

    computations = {
        keys.IMAGE_AUROC: image_auroc,
        keys.PIXEL_AUROC: pixel_auroc,
        keys.PIXEL_AUPRO: pixel_aupro,
        keys.IMAGE_F1_MAX: lambda: f1_from_ranking(image_ranking, image_positive)[0],
        keys.PIXEL_F1_MAX: lambda: f1_from_ranking(ranking, pixel_positive)[0],
    }
    for name, compute in computations.items():
        try:
            out[f"{name}{suffix}"] = float(compute())
        except ValueError as exc:
            logger.warning("%s%s left out: %s", name, where, exc)
