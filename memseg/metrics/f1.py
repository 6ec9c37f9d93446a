"""F1-max: the best F1 over all thresholds of the precision-recall curve (image- or pixel-level).

Not in the paper (which reports AUROC only) but the usual companion of AUROC in anomaly
detection benchmarks, and its threshold is a sensible starting point for ``memseg predict
--threshold``. At the threshold of tie group g (score >= threshold is anomalous) with cumulative
counts TP_g, FP_g and P positives overall: F1_g = 2 TP_g / (TP_g + FP_g + P), which is the
harmonic mean of precision TP/(TP+FP) and recall TP/P that ``sklearn.metrics.precision_recall_curve``
gives at the same thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memseg.metrics.auroc import Ranking, check_binary, check_scores, rank, roc_counts


def f1_from_ranking(ranking: Ranking, positive: np.ndarray) -> tuple[float, float]:
    """Best F1 and its threshold.

    Args:
        ranking: the ranked items.
        positive: (n,) bool in ranked order.

    Returns:
        ``(f1_max, threshold)``: predicting ``score >= threshold`` as anomalous reaches ``f1_max``.

    Raises:
        ValueError: when there are no positive items (F1 is undefined).
    """
    _, tps, ends = roc_counts(ranking, positive)
    n_pos = int(tps[-1]) if tps.size else 0
    if n_pos == 0:
        msg = f"F1 is undefined: no anomalous samples among {ranking.size}"
        raise ValueError(msg)
    f1 = 2.0 * tps / (ends + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(ranking.thresholds(ends[best : best + 1])[0])


def f1_max_threshold(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it.

    Args:
        labels: (N,) or any shape, > 0.5 = anomalous (image labels or flattened masks).
        scores: same number of items, higher = more anomalous.
    """
    positive = check_binary(labels, "F1 labels")
    scores = check_scores(scores, "F1 scores")
    if positive.size != scores.size:
        msg = f"F1: {positive.size} labels but {scores.size} scores"
        raise ValueError(msg)
    ranking = rank(scores, positive)
    return f1_from_ranking(ranking, ranking.payload.astype(bool))


def f1_max(labels: Any, scores: Any) -> float:
    """Best F1 over all thresholds of the precision-recall curve (see :func:`f1_max_threshold`)."""
    return f1_max_threshold(labels, scores)[0]
