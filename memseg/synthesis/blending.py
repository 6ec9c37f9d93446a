"""Transparency blending of an anomaly source into a normal image (docs/model.md, "Anomaly synthesis").

``I_A = (1 - M) * I + delta * (M * S) + (1 - delta) * (M * I)``: outside the mask the image is kept,
inside it the source shows through with opacity ``delta``.
"""

from __future__ import annotations

import numpy as np


def blend(image: np.ndarray, source: np.ndarray, mask: np.ndarray, delta: float) -> np.ndarray:
    """Blend ``source`` into ``image`` where ``mask`` is set.

    Computed in float32 as ``I + (delta * M) * (S - I)``, which is the formula above rearranged
    (one multiply-add per value instead of five), then rounded to the nearest integer.

    Args:
        image: uint8 ``(H, W, 3)`` normal image I.
        source: uint8 ``(H, W, 3)`` anomaly source S.
        mask: ``(H, W)`` mask M in [0, 1] (normally {0, 1}).
        delta: Transparency factor in [0, 1]; 1 pastes the source, 0 leaves the image.

    Returns:
        uint8 ``(H, W, 3)``; a copy of ``image`` when the mask is empty.
    """
    if image.shape != source.shape:
        msg = f"blend: image {image.shape} and source {source.shape} differ in shape"
        raise ValueError(msg)
    if mask.shape != image.shape[:2]:
        msg = f"blend: mask {mask.shape} does not match image {image.shape[:2]}"
        raise ValueError(msg)
    if not (0.0 <= delta <= 1.0):
        msg = f"blend: delta must be in [0, 1], got {delta}"
        raise ValueError(msg)
    if not mask.any() or delta == 0.0:
        return image.copy()
    img = image.astype(np.float32)
    alpha = mask.astype(np.float32, copy=False) * np.float32(delta)
    diff = source.astype(np.float32)
    diff -= img
    diff *= alpha[..., None]
    img += diff
    np.rint(img, out=img)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)
