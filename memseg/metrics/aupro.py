"""AUPRO: area under the per-region-overlap curve up to a false positive rate limit.

The standard MVTec AD definition (Bergmann et al.), with the usual 0.3 limit, NOT the full-range
variant of the TooTouch reimplementation (docs/model.md, "Evaluation and scoring"):

- every 8-connected component of every ground-truth mask is one region;
- at a threshold t, PRO(t) is the mean, over all regions of all images, of the share of the
  region's pixels scoring >= t; FPR(t) is the share of all normal pixels (of all images, good
  images included) scoring >= t;
- the curve (FPR, PRO), starting at (0, 0), is integrated with the trapezoid rule from FPR 0 to
  ``fpr_limit``, with PRO linearly interpolated at the limit, and divided by ``fpr_limit`` so a
  perfect map scores 1.

Thresholds: every distinct score is a breakpoint (exact, no threshold grid). It costs one sort of
all pixels (see :func:`memseg.metrics.auroc.rank`) and a few cumulative sums: each pixel adds
1/|normal pixels| to FPR or 1/(regions x |its region|) to PRO when the threshold passes its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from memseg.metrics.auroc import Ranking, as_numpy, check_scores, rank, roc_counts


@dataclass(frozen=True)
class Regions:
    """Pixels labelled by region: each image's normal background is one region, each GT component one.

    Attributes:
        ids: (N, H, W) uint32 region id of every pixel.
        image: (R,) index of the image each region belongs to.
        anomalous: (R,) True for a ground-truth component, False for a background.
        size: (R,) pixels in the region.
    """

    ids: np.ndarray
    image: np.ndarray
    anomalous: np.ndarray
    size: np.ndarray

    def count_anomalous(self, images: np.ndarray | None = None) -> int:
        """Number of GT components, over all images or those where ``images`` (N,) bool is true."""
        keep = self.anomalous & (self.size > 0)
        if images is not None:
            keep &= images[self.image]
        return int(np.count_nonzero(keep))


def as_mask_stack(masks: Any, maps: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Check and return ``(masks bool (N, H, W), maps (N, H, W))``; a single (H, W) pair is accepted."""
    masks_np, maps_np = as_numpy(masks), as_numpy(maps)
    if masks_np.shape != maps_np.shape:
        msg = f"{what}: masks have shape {masks_np.shape} but maps {maps_np.shape}"
        raise ValueError(msg)
    if masks_np.ndim == 2:
        masks_np, maps_np = masks_np[None], maps_np[None]
    if masks_np.ndim != 3:
        msg = f"{what}: expected masks and maps of shape (N, H, W), got {masks_np.shape}"
        raise ValueError(msg)
    check_scores(maps_np, f"{what} maps")
    return (masks_np > 0.5) if masks_np.dtype != np.bool_ else masks_np, maps_np


def label_regions(masks: np.ndarray) -> Regions:
    """Label the 8-connected GT components of each mask and the background of each image.

    Args:
        masks: (N, H, W) bool ground truth.
    """
    n = masks.shape[0]
    ids = np.empty(masks.shape, dtype=np.uint32)
    image, anomalous = [], []
    offset = 0
    for i in range(n):
        count, labels = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        ids[i] = labels
        ids[i] += offset
        image.extend([i] * count)
        anomalous.extend([False] + [True] * (count - 1))
        offset += count
    size = np.bincount(ids.ravel(), minlength=offset)
    return Regions(ids, np.asarray(image, dtype=np.int64), np.asarray(anomalous, dtype=bool), size)


def pro_curve(ranking: Ranking, regions: Regions, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """The (FPR, PRO) curve at every distinct threshold, starting at (0, 0).

    Args:
        ranking: pixels ranked by score, with their region id as payload.
        regions: the region table the ids refer to.
        n_regions: number of GT components among the ranked pixels (the PRO denominator).

    Returns:
        ``(fpr, pro)``, each (G + 1,) float64, FPR non-decreasing.

    Raises:
        ValueError: no normal pixel or no GT component (the curve is undefined).
    """
    ids = ranking.payload
    anomalous = regions.anomalous[ids]
    fps, _, ends = roc_counts(ranking, anomalous)
    n_normal = int(fps[-1]) if fps.size else 0
    if n_regions == 0:
        msg = "AUPRO is undefined: no anomalous region in the ground-truth masks"
        raise ValueError(msg)
    if n_normal == 0:
        msg = "AUPRO is undefined: no normal pixel in the ground-truth masks"
        raise ValueError(msg)
    weight = np.where(regions.anomalous, 1.0 / np.maximum(regions.size, 1), 0.0)
    pro = np.cumsum(weight[ids])[ends - 1] / n_regions
    fpr = fps / n_normal
    # Rounding in the cumulative sum must not push the curve past 1.
    return np.concatenate(([0.0], fpr)), np.clip(np.concatenate(([0.0], pro)), 0.0, 1.0)


def integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) for x in [0, limit], y interpolated at the limit, divided by limit.

    Args:
        x: (G,) non-decreasing, starting at 0.
        y: (G,) values at x.
        limit: upper integration bound, in (0, 1].
    """
    inside = int(np.searchsorted(x, limit, side="right"))  # x[:inside] <= limit
    area = float(np.trapezoid(y[:inside], x[:inside]))
    last = inside - 1
    if inside < x.size and x[last] < limit:
        # The segment crossing the limit: x[last] < limit < x[inside].
        step = (limit - x[last]) / (x[inside] - x[last])
        y_limit = y[last] + step * (y[inside] - y[last])
        area += (limit - x[last]) * (y[last] + y_limit) / 2.0
    return area / limit


def check_fpr_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        msg = f"fpr_limit must be in (0, 1], got {fpr_limit}"
        raise ValueError(msg)
    return float(fpr_limit)


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``.

    Args:
        masks: (N, H, W) ground truth, > 0.5 = anomalous (good images: all zero).
        maps: (N, H, W) anomaly maps.
        fpr_limit: integrate FPR from 0 to this value (standard: 0.3).

    Returns:
        AUPRO in [0, 1]; 1 for a map that ranks every anomalous pixel above every normal one.

    Raises:
        ValueError: no GT region, no normal pixel, mismatched shapes, NaN maps, bad limit.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    masks_b, maps_np = as_mask_stack(masks, maps, "AUPRO")
    regions = label_regions(masks_b)
    ranking = rank(maps_np, regions.ids)
    fpr, pro = pro_curve(ranking, regions, regions.count_anomalous())
    return integrate_to(fpr, pro, fpr_limit)
