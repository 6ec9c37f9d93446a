"""Heat-map overlays of anomaly maps, for ``memseg predict`` and the validation images in MLflow.

The colour scale is FIXED to [0, 1] (the map is a probability), never stretched per image: a clean
image with a flat 0.02 map must look clean, not show its noise in full red. The heat colour is
blended in proportionally to the score (``alpha * score``), so a zero map leaves the image untouched.
"""

from __future__ import annotations

import cv2
import numpy as np

CONTOUR_RGB = (0, 255, 0)
SEPARATOR_PX = 4


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        msg = f"image must be uint8, got {image.dtype}"
        raise ValueError(msg)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        msg = f"image must be (H, W, 3) RGB or (H, W) grayscale, got shape {image.shape}"
        raise ValueError(msg)
    return image


def _fit(values: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        msg = f"anomaly map / mask must be (H, W), got shape {values.shape}"
        raise ValueError(msg)
    if values.shape != (height, width):
        values = cv2.resize(values, (width, height), interpolation=interpolation)
    return values


def overlay_heatmap(image_u8: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET heat map of ``anomaly_map`` onto the image.

    Args:
        image_u8: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grayscale).
        anomaly_map: ``(h, w)`` scores in [0, 1] (clipped); resized to the image if needed.
        alpha: opacity of the heat colour where the score is 1.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    image = _rgb(image_u8)
    h, w = image.shape[:2]
    scores = np.clip(_fit(np.asarray(anomaly_map, dtype=np.float32), h, w, cv2.INTER_LINEAR), 0.0, 1.0)
    heat_bgr = cv2.applyColorMap(np.round(scores * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (float(alpha) * scores)[..., None]
    blended = image.astype(np.float32) * (1.0 - weight) + heat * weight
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def draw_contour(image_u8: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    """The image with the outline of ``mask`` (> 0.5 = anomalous) drawn on it; ``(H, W, 3)`` uint8 RGB."""
    image = _rgb(image_u8).copy()
    h, w = image.shape[:2]
    binary = (_fit(np.asarray(mask, dtype=np.float32), h, w, cv2.INTER_NEAREST) > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(h, w) / 200))
    cv2.drawContours(image, contours, -1, color, thickness)
    return image


def panel(image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray) -> np.ndarray:
    """Three tiles side by side: the image | the image with the GT outline | the heat-map overlay.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` ground truth, or None (the middle tile is then the plain image).
        anomaly_map: ``(h, w)`` scores in [0, 1].

    Returns:
        ``(H, 3 W + 2 * SEPARATOR_PX, 3)`` uint8 RGB, white separators.
    """
    rgb = _rgb(image)
    middle = draw_contour(rgb, mask) if mask is not None else rgb
    separator = np.full((rgb.shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([rgb, separator, middle, separator, overlay_heatmap(rgb, anomaly_map)], axis=1)
