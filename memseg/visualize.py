"""Heat maps of anomaly maps a person can read: for ``memseg predict``, the test panels logged at
registration, the validation images in MLflow and the report.

Two pictures:

* :func:`overlay_heatmap`, the bare overlay at the image's size. Its colour scale is FIXED to [0, 1]
  (the map is a probability): with no numbers printed on it, a clean image with a flat 0.02 map must
  look clean, not show its noise in full red. The heat colour is blended in proportionally to the
  score (``alpha * score``), so a zero map leaves the image untouched.
* :func:`panel`, labelled tiles ``image | ground truth | anomaly map | overlay`` (no ground-truth tile
  without a mask) with a colour bar and its numbers. Its colour scale is STRETCHED to the map's own
  range (:func:`map_range`: its minimum to its maximum), and the range is printed on the colour bar
  and under the tiles, so a map that peaks at 0.15 is visible and the reader knows it peaks at 0.15;
  a fixed [0, 1] scale left such maps invisible. The price is that a clean image's noise fills the
  scale too: the printed range (e.g. ``0.001 to 0.02``) is what says it is clean. Small images are
  upscaled (nearest neighbour, by a whole factor) to at least :data:`MIN_TILE_PX` per tile; large ones
  are shrunk (area) to at most :data:`MAX_TILE_PX`.

:func:`stack_panels` puts several panels under one another, so a set of them travels as one picture
(one MLflow image per evaluation instead of one per panel).

Pure numpy + OpenCV; text is drawn with ``cv2.putText``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

CONTOUR_RGB = (0, 255, 0)
SEPARATOR_PX = 4
# A 64 px image shown at native size is a thumbnail; 256 px tiles keep a defect of a few pixels visible.
MIN_TILE_PX = 256
# Four tiles of a full-size photograph would be several thousand pixels wide.
MAX_TILE_PX = 512
LABEL_PX = 28  # the strip above each tile holding its name
FOOTER_PX = 24  # the line under the tiles stating the colour scale
BAR_PX = 20  # the colour bar's width
BAR_AREA_PX = 96  # the colour bar with its numbers (gap, bar, gap, labels)
BAR_GAP_PX = 8
COLORMAP = cv2.COLORMAP_JET
# Below this spread the map is flat: stretching it would paint rounding noise.
_FLAT = 1e-6
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_RGB = (0, 0, 0)
_BACKGROUND = 255

TITLE_IMAGE, TITLE_TRUTH, TITLE_MAP, TITLE_OVERLAY = "image", "ground truth", "anomaly map", "overlay"


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


def colorize(scores: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] (clipped) as the colormap's ``(H, W, 3)`` uint8 RGB."""
    levels = np.round(np.clip(scores, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAP), cv2.COLOR_BGR2RGB)


def overlay_heatmap(
    image_u8: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5, value_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Blend a JET heat map of ``anomaly_map`` onto the image.

    Args:
        image_u8: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grayscale).
        anomaly_map: ``(h, w)`` scores; resized to the image if needed.
        alpha: opacity of the heat colour at the top of the scale.
        value_range: the scores drawn as the bottom and the top of the colour scale (clipped outside);
            the fixed probability scale [0, 1] unless a caller prints another one beside the picture.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    image = _rgb(image_u8)
    h, w = image.shape[:2]
    low, high = value_range
    if not high > low:
        msg = f"value_range must rise, got {value_range}"
        raise ValueError(msg)
    raw = _fit(np.asarray(anomaly_map, dtype=np.float32), h, w, cv2.INTER_LINEAR)
    scores = np.clip((raw - low) / (high - low), 0.0, 1.0)
    heat = colorize(scores).astype(np.float32)
    weight = (float(alpha) * scores)[..., None]
    blended = image.astype(np.float32) * (1.0 - weight) + heat * weight
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def draw_contour(image_u8: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    """The image with the outline of ``mask`` (> 0.5 = anomalous) drawn on it; ``(H, W, 3)`` uint8 RGB."""
    image = _rgb(image_u8).copy()
    h, w = image.shape[:2]
    binary = (_fit(np.asarray(mask, dtype=np.float32), h, w, cv2.INTER_NEAREST) > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(h, w) / 128))
    cv2.drawContours(image, contours, -1, color, thickness)
    return image


def tile_size(height: int, width: int) -> tuple[int, int]:
    """The displayed ``(height, width)`` of an image's tile: a whole multiple of a small image whose
    longer side reaches :data:`MIN_TILE_PX`, a large one shrunk to :data:`MAX_TILE_PX`, else as is."""
    longest = max(height, width)
    if longest < MIN_TILE_PX:
        factor = math.ceil(MIN_TILE_PX / longest)
        return height * factor, width * factor
    if longest > MAX_TILE_PX:
        return max(1, round(height * MAX_TILE_PX / longest)), max(1, round(width * MAX_TILE_PX / longest))
    return height, width


def map_range(anomaly_map: np.ndarray) -> tuple[float, float]:
    """The panel's colour scale: the map's minimum and maximum (non-finite values ignored); a flat map
    gets a sliver above its value so it draws as the scale's bottom colour."""
    values = np.asarray(anomaly_map, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high - low >= _FLAT else (low, low + _FLAT)


def format_score(value: float, spread: float = 1.0) -> str:
    """A score on a scale ``spread`` wide: three decimals, more when the spread is below 0.01, so the
    numbers of one colour bar share their decimals and tell its bottom, middle and top apart."""
    decimals = 3 if spread >= 0.01 or spread <= 0 else min(1 - math.floor(math.log10(spread)), 8)
    return f"{value:.{decimals}f}"


def _text(canvas: np.ndarray, text: str, x: int, baseline: int, scale: float = 0.5) -> None:
    cv2.putText(canvas, text, (x, baseline), _FONT, scale, _TEXT_RGB, 1, cv2.LINE_AA)


def _labelled(tile: np.ndarray, title: str) -> np.ndarray:
    """``tile`` under a white strip of :data:`LABEL_PX` holding ``title``."""
    strip = np.full((LABEL_PX, tile.shape[1], 3), _BACKGROUND, dtype=np.uint8)
    _text(strip, title, 6, LABEL_PX - 9, 0.6)
    return np.concatenate([strip, tile], axis=0)


def colour_bar(height: int, value_range: tuple[float, float]) -> np.ndarray:
    """The colour scale as a :data:`BAR_AREA_PX`-wide picture: the colormap from the top of
    ``value_range`` (top row) to its bottom (last row) in columns ``BAR_GAP_PX : BAR_GAP_PX + BAR_PX``,
    with the bottom, middle and top values printed beside it."""
    area = np.full((height, BAR_AREA_PX, 3), _BACKGROUND, dtype=np.uint8)
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None]
    area[:, BAR_GAP_PX : BAR_GAP_PX + BAR_PX] = colorize(np.repeat(ramp, BAR_PX, axis=1))
    low, high = value_range
    x = BAR_GAP_PX + BAR_PX + 6
    for fraction in (1.0, 0.5, 0.0):
        row = round((1.0 - fraction) * (height - 1))
        baseline = min(max(row + 5, 12), height - 3)
        _text(area, format_score(low + fraction * (high - low), _shown_spread(value_range)), x, baseline, 0.45)
    return area


def panel(image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray) -> np.ndarray:
    """Labelled tiles: the image | ground truth (its outline on the image) | the anomaly map | the overlay,
    then a colour bar with its numbers, and a line stating the colour scale below.

    The map is drawn on its own min-max scale (:func:`map_range`), printed on the colour bar and in the
    line below. Every tile is :func:`tile_size` of the image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` ground truth, or None (no ground-truth tile: new images, ``memseg predict``).
        anomaly_map: ``(h, w)`` scores, resized to the tile.

    Returns:
        ``(LABEL_PX + th + FOOTER_PX, n * tw + (n - 1) * SEPARATOR_PX + BAR_AREA_PX, 3)`` uint8 RGB on
        white, ``n`` = 4 tiles with a mask, 3 without, ``(th, tw)`` = :func:`tile_size`.
    """
    rgb = _rgb(image)
    th, tw = tile_size(*rgb.shape[:2])
    shrink = th < rgb.shape[0]
    shown = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    values = np.asarray(anomaly_map, dtype=np.float32)
    scale = map_range(values)
    stretched = _fit(values, th, tw, cv2.INTER_LINEAR)
    tiles = [(TITLE_IMAGE, shown)]
    if mask is not None:
        tiles.append((TITLE_TRUTH, draw_contour(shown, mask)))
    low, high = scale
    tiles += [
        (TITLE_MAP, colorize((stretched - low) / (high - low))),
        (TITLE_OVERLAY, overlay_heatmap(shown, stretched, value_range=scale)),
    ]
    separator = np.full((LABEL_PX + th, SEPARATOR_PX, 3), _BACKGROUND, dtype=np.uint8)
    row: list[np.ndarray] = []
    for i, (title, tile) in enumerate(tiles):
        if i:
            row.append(separator)
        row.append(_labelled(tile, title))
    bar = np.full((LABEL_PX + th, BAR_AREA_PX, 3), _BACKGROUND, dtype=np.uint8)
    bar[LABEL_PX:] = colour_bar(th, scale)
    _text(bar, "score", BAR_GAP_PX, LABEL_PX - 9, 0.5)
    body = np.concatenate([*row, bar], axis=1)
    footer = np.full((FOOTER_PX, body.shape[1], 3), _BACKGROUND, dtype=np.uint8)
    _text(footer, scale_note(scale), 6, FOOTER_PX - 8, 0.45)
    return np.concatenate([body, footer], axis=0)


def stack_panels(panels: list[np.ndarray]) -> np.ndarray:
    """RGB pictures under one another, left-aligned on white, :data:`SEPARATOR_PX` apart.

    Raises:
        ValueError: no picture given.
    """
    if not panels:
        raise ValueError("stack_panels: no picture to stack")
    width = max(p.shape[1] for p in panels)
    rows: list[np.ndarray] = []
    for i, picture in enumerate(panels):
        if i:
            rows.append(np.full((SEPARATOR_PX, width, 3), _BACKGROUND, dtype=np.uint8))
        padded = np.full((picture.shape[0], width, 3), _BACKGROUND, dtype=np.uint8)
        padded[:, : picture.shape[1]] = _rgb(picture)
        rows.append(padded)
    return np.concatenate(rows, axis=0)


def scale_note(value_range: tuple[float, float]) -> str:
    """The line under a panel stating its colour scale."""
    low, high = value_range
    spread = _shown_spread(value_range)
    if high - low < 2 * _FLAT:
        return f"colour scale: this map is flat at {format_score(low)} (not 0 to 1)"
    return (f"colour scale: this map's min to max, {format_score(low, spread)} to {format_score(high, spread)} "
            f"(spread {format_score(spread, spread)}; not 0 to 1)")


def _shown_spread(value_range: tuple[float, float]) -> float:
    """The spread the numbers are formatted for: a flat map's sliver (:func:`map_range`) is not one."""
    spread = value_range[1] - value_range[0]
    return 1.0 if spread < 2 * _FLAT else spread
