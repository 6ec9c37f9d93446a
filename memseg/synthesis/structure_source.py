"""The structural anomaly source: the image itself, jittered and grid-shuffled.

Paper: "apply random mirror symmetry, rotation, brightness, saturation and hue changes to the input
image, then split it uniformly into a 4x8 grid and shuffle the cells". (TooTouch instead applies 3
random imgaug ops and an 8x8 grid; the grid size is a config option.)

Everything is whole-array OpenCV/numpy work: flips and rotation with ``cv2.flip``/``cv2.warpAffine``,
colour changes as one per-channel lookup table on the HSV image, and the shuffle as a reshape,
a fancy-index over cells and the inverse reshape.
"""

from __future__ import annotations

import cv2
import numpy as np

from memseg.config import SynthesisConfig

# OpenCV stores 8-bit hue as degrees / 2, so the hue circle has 180 steps.
_HUE_STEPS = 180


def jitter_colour(image_u8: np.ndarray, hue_shift: float, saturation: float, brightness: float) -> np.ndarray:
    """Shift hue and scale saturation and value of an RGB image.

    Args:
        image_u8: uint8 ``(H, W, 3)`` RGB.
        hue_shift: Fraction of the hue circle to add (may be negative).
        saturation: Factor on the HSV saturation.
        brightness: Factor on the HSV value.

    Returns:
        uint8 ``(H, W, 3)`` RGB.
    """
    levels = np.arange(256, dtype=np.float32)
    lut = np.empty((256, 1, 3), dtype=np.uint8)
    shift = round(hue_shift * _HUE_STEPS)
    lut[:, 0, 0] = (np.arange(256) + shift) % _HUE_STEPS
    lut[:, 0, 1] = np.clip(np.rint(levels * saturation), 0, 255)
    lut[:, 0, 2] = np.clip(np.rint(levels * brightness), 0, 255)
    hsv = cv2.cvtColor(image_u8, cv2.COLOR_RGB2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2RGB)


def shuffle_grid(image: np.ndarray, rows: int, cols: int, perm: np.ndarray) -> np.ndarray:
    """Split an image into a ``rows x cols`` grid of equal cells and reorder the cells.

    Cells are ``(H // rows, W // cols)`` pixels; when the size is not divisible, the leftover strip
    at the bottom/right is kept in place, so the output always has the input's shape.

    Args:
        image: ``(H, W, C)`` array.
        rows: Grid rows (capped at H).
        cols: Grid columns (capped at W).
        perm: Permutation of ``range(rows * cols)``: output cell ``k`` (row-major) is input cell ``perm[k]``.

    Returns:
        Array of the input's shape and dtype.
    """
    h, w, c = image.shape
    rows, cols = min(rows, h), min(cols, w)
    ch, cw = h // rows, w // cols
    region = image[: rows * ch, : cols * cw]
    cells = region.reshape(rows, ch, cols, cw, c).transpose(0, 2, 1, 3, 4).reshape(rows * cols, ch, cw, c)
    shuffled = cells[perm].reshape(rows, cols, ch, cw, c).transpose(0, 2, 1, 3, 4).reshape(rows * ch, cols * cw, c)
    out = image.copy()
    out[: rows * ch, : cols * cw] = shuffled
    return out


def structure_source(image_u8: np.ndarray, rng: np.random.Generator, cfg: SynthesisConfig) -> np.ndarray:
    """Build the structural anomaly source from the input image.

    Steps: mirror horizontally and (independently) vertically, each with probability
    ``structure_flip_probability``; rotate by ``U[-structure_rotation_deg, +]`` (reflected border);
    scale brightness and saturation by ``U[1 - structure_color_jitter, 1 + structure_color_jitter]``
    and shift hue by ``U[-structure_hue_jitter, +]`` of the hue circle; shuffle a
    ``structure_grid_rows x structure_grid_cols`` grid of cells.

    Args:
        image_u8: uint8 ``(H, W, 3)`` RGB.
        rng: The only source of randomness; the same number of draws is made whatever the config.
        cfg: The synthesis config.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[2] != 3:
        msg = f"structure_source: expected uint8 (H, W, 3), got {image_u8.dtype} {image_u8.shape}"
        raise ValueError(msg)
    h, w = image_u8.shape[:2]
    flips = rng.random(2) < cfg.structure_flip_probability
    angle = float(rng.uniform(-cfg.structure_rotation_deg, cfg.structure_rotation_deg))
    cj, hj = cfg.structure_color_jitter, cfg.structure_hue_jitter
    brightness, saturation = (float(v) for v in rng.uniform(1.0 - cj, 1.0 + cj, size=2))
    hue = float(rng.uniform(-hj, hj))
    rows, cols = min(cfg.structure_grid_rows, h), min(cfg.structure_grid_cols, w)
    perm = rng.permutation(rows * cols)

    out = image_u8
    if flips[0] and flips[1]:
        out = cv2.flip(out, -1)
    elif flips[0]:
        out = cv2.flip(out, 1)
    elif flips[1]:
        out = cv2.flip(out, 0)
    if angle != 0.0:
        rot = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        out = cv2.warpAffine(out, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if brightness != 1.0 or saturation != 1.0 or round(hue * _HUE_STEPS) != 0:
        out = jitter_colour(out, hue, saturation, brightness)
    return shuffle_grid(out, rows, cols, perm)
