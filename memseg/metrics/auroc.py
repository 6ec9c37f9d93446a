"""Area under the ROC curve, image- and pixel-level, plus the ranking core.

Every threshold metric here (ROC AUC, F1-max, AUPRO) needs the same thing: the items sorted by
score, highest first, with tied scores grouped. :func:`rank` does that once and exactly:

- float32 (and narrower) scores are turned into order-preserving int32 keys and packed with a small
  integer payload (a label bit, or a region id) into one int64, so a single ``np.sort`` (about twice
  as fast as ``argsort`` plus two gathers) orders scores and payloads together;
- wider scores (float64 image scores) fall back to ``argsort``, never downcast, so their ties are
  exactly the ties of the input.

The AUC is the trapezoidal area over all distinct thresholds, which equals the Mann-Whitney
statistic with mid-ranks for ties, i.e. ``sklearn.metrics.roc_auc_score``; it is accumulated in
integers, so it does not drift with millions of pixels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# Dtypes whose every value is exactly representable in float32, hence packable in 32 bits.
_PACKABLE = frozenset(np.dtype(t) for t in (np.float32, np.float16, np.uint8, np.int8, np.uint16, np.int16, np.bool_))


def as_numpy(values: Any) -> np.ndarray:
    """A NumPy view of an array-like or a (possibly CUDA, possibly grad-tracking) torch tensor."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def check_scores(scores: Any, name: str) -> np.ndarray:
    """Flatten scores and reject NaN or infinite values (undefined order)."""
    scores = np.ravel(as_numpy(scores))
    if scores.dtype.kind not in "fiub":
        msg = f"{name} must be numeric, got dtype {scores.dtype}"
        raise ValueError(msg)
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        bad = int(np.size(scores) - np.count_nonzero(np.isfinite(scores)))
        msg = f"{name} contain {bad} NaN or infinite value(s)"
        raise ValueError(msg)
    return scores


def check_binary(labels: Any, name: str) -> np.ndarray:
    """Flatten labels/masks to bool: values > 0.5 are positive (handles {0,1}, {0,255} and bool)."""
    labels = np.ravel(as_numpy(labels))
    if labels.dtype == np.bool_:
        return labels
    if labels.dtype.kind not in "fiu":
        msg = f"{name} must be numeric or bool, got dtype {labels.dtype}"
        raise ValueError(msg)
    return labels > 0.5


def _sortable32(scores: np.ndarray) -> np.ndarray:
    # IEEE floats order like sign-magnitude integers; flipping the magnitude bits of negatives makes
    # them order like two's complement. Adding +0.0 first folds -0.0 into +0.0 (they tie).
    bits = (scores.astype(np.float32, copy=False) + np.float32(0.0)).view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _sortable64(scores: np.ndarray) -> np.ndarray:
    bits = (scores.astype(np.float64, copy=False) + 0.0).view(np.int64)
    return bits ^ ((bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))


@dataclass(frozen=True)
class Ranking:
    """Items sorted by score, highest first.

    Attributes:
        score_keys: (n,) order-preserving integer keys of the sorted scores (equal key = tie).
        payload: (n,) non-negative integer payload of each item in the same order.
        wide: whether ``score_keys`` encode float64 (else float32).
    """

    score_keys: np.ndarray
    payload: np.ndarray
    wide: bool

    @property
    def size(self) -> int:
        return int(self.payload.size)

    def group_ends(self) -> np.ndarray:
        """(G,) exclusive end index of every tie group; thresholding at group g keeps items [0, end_g)."""
        keys = self.score_keys
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64)
        ends = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        return np.append(ends, keys.size).astype(np.int64)

    def thresholds(self, ends: np.ndarray) -> np.ndarray:
        """(G,) the score of each group (the threshold: score >= it is predicted anomalous)."""
        keys = self.score_keys[ends - 1]
        if self.wide:
            keys = keys.astype(np.int64)
            return (keys ^ ((keys >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))).view(np.float64)
        keys = keys.astype(np.int32)
        return (keys ^ ((keys >> 31) & np.int32(0x7FFFFFFF))).view(np.float32).astype(np.float64)

    def subset(self, keep: np.ndarray) -> Ranking:
        """The ranking of the items where ``keep`` (in ranked order) is true; order is preserved."""
        return Ranking(self.score_keys[keep], self.payload[keep], self.wide)


def rank(scores: np.ndarray, payload: np.ndarray) -> Ranking:
    """Sort ``scores`` descending, carrying ``payload`` (non-negative ints < 2**32) along.

    Args:
        scores: (n,) finite scores (any shape; flattened).
        payload: (n,) non-negative integers below 2**32 (a label bit, a region id), same count.
    """
    scores = np.ravel(scores)
    payload = np.ravel(payload)
    if scores.size != payload.size:
        msg = f"scores have {scores.size} items but labels/masks have {payload.size}"
        raise ValueError(msg)
    if scores.dtype in _PACKABLE and sys.byteorder == "little":
        # One int64 per item: score key in the high half, payload in the low half. After the sort
        # both halves are read back as strided int32 views, so no further copies are made.
        key = _sortable32(scores).astype(np.int64)
        key <<= 32
        key |= payload.astype(np.uint32, copy=False)
        key.sort()
        halves = key.view(np.int32)
        return Ranking(halves[1::2][::-1], halves.view(np.uint32)[0::2][::-1], wide=False)
    wide = _sortable64(scores)
    order = np.argsort(wide)[::-1]
    return Ranking(wide[order], payload[order], wide=True)


def roc_counts(ranking: Ranking, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false and true positives at every distinct threshold, highest threshold first.

    Args:
        ranking: the ranked items.
        positive: (n,) bool, in ranked order.

    Returns:
        ``(fps, tps, ends)``, each (G,) int64.
    """
    ends = ranking.group_ends()
    if not ends.size:
        return ends, ends, ends
    # int32 running counts halve the memory traffic; int64 only past 2**31 items.
    dtype = np.int32 if ranking.size < 2**31 else np.int64
    tps = np.cumsum(positive, dtype=dtype)[ends - 1].astype(np.int64)
    return ends - tps, tps, ends


def auc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """Trapezoidal ROC AUC from cumulative counts; exact (integer) up to the final division.

    Raises:
        ValueError: when only one class is present (ROC AUC is undefined).
    """
    n_pos = int(tps[-1]) if tps.size else 0
    n_neg = int(fps[-1]) if fps.size else 0
    if n_pos == 0 or n_neg == 0:
        present = "only normal" if n_pos == 0 else "only anomalous"
        msg = (
            f"ROC AUC is undefined: {present} samples ({n_pos + n_neg} in all); "
            "the evaluation set needs both normal and anomalous samples"
        )
        raise ValueError(msg)
    fps = np.concatenate(([0], fps))
    tps = np.concatenate(([0], tps))
    twice_area = int(np.sum(np.diff(fps) * (tps[1:] + tps[:-1]), dtype=np.int64))
    return twice_area / (2.0 * n_pos * n_neg)


def _auroc(labels: Any, scores: Any, what: str) -> float:
    positive = check_binary(labels, f"{what} labels")
    scores = check_scores(scores, f"{what} scores")
    if positive.size != scores.size:
        msg = f"{what}: {positive.size} labels but {scores.size} scores"
        raise ValueError(msg)
    ranking = rank(scores, positive)
    fps, tps, _ = roc_counts(ranking, ranking.payload.astype(bool))
    try:
        return auc_from_counts(fps, tps)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level ROC AUC.

    Args:
        labels: (N,) 1 = anomalous, 0 = normal.
        scores: (N,) image anomaly scores (higher = more anomalous).

    Raises:
        ValueError: one class only, NaN scores, or mismatched lengths.
    """
    return _auroc(labels, scores, "image AUROC")


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level ROC AUC over all pixels of all images.

    Args:
        masks: (N, H, W) ground truth, > 0.5 = anomalous.
        maps: (N, H, W) anomaly maps, same shape.
    """
    masks_np, maps_np = as_numpy(masks), as_numpy(maps)
    if masks_np.shape != maps_np.shape:
        msg = f"pixel AUROC: masks have shape {masks_np.shape} but maps {maps_np.shape}"
        raise ValueError(msg)
    return _auroc(masks_np, maps_np, "pixel AUROC")
