"""Evaluation metrics (docs/model.md, "Evaluation and scoring"): AUROC, AUPRO@0.3, F1-max, top-k image scores.

Pure NumPy (plus OpenCV for connected components); metric names live in :mod:`memseg.metrics.keys`.
"""

from memseg.metrics.aupro import aupro
from memseg.metrics.auroc import image_auroc, pixel_auroc
from memseg.metrics.f1 import f1_max, f1_max_threshold
from memseg.metrics.scoring import compute_metrics, image_scores

__all__ = ["aupro", "compute_metrics", "f1_max", "f1_max_threshold", "image_auroc", "image_scores", "pixel_auroc"]
