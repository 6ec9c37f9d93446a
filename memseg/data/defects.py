"""Defect painters for the realistic benchmark: processes independent of the training synthesis.

MemSeg trains on Perlin-shaped patches of a texture or of a shuffled copy of the image blended into
normal images (see docs/model.md, "Anomaly synthesis"). A benchmark whose defects were made that way
would reward fitting the synthesis, so each painter here draws a defect by another process:

* ``crack``: a jagged random walk with short branches, dark inside, with a light shading edge on the
  lit side (a broken surface seen under oblique light);
* ``scratch``: one smooth thin curve (quadratic Bézier), anti-aliased, a bright glint or a dark groove
  whose strength fades towards its ends;
* ``stain``: a soft-edged irregular blob that darkens and tints the surface, with a darker dried rim
  and a slight loss of detail inside (a wet film);
* ``pitting``: a cluster of small dark pits, each with a highlight on its far rim;
* ``cut_paste``: a star-shaped patch of another photograph, or of the same photograph at another
  orientation and scale, pasted in with a one-pixel feather;
* ``warp``: a smooth random displacement field confined to a small round region (a dent or a bulge
  in a woven or granular surface).

Every painter takes a float32 ``(H, W, 3)`` image in [0, 1] and a ``numpy.random.Generator`` and
returns the painted image and the defect's footprint as a float32 ``(H, W)`` weight in [0, 1];
:func:`paint_defect` binarises the footprint, checks its size and visibility, and retries.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

DEFECT_TYPES: tuple[str, ...] = ("crack", "scratch", "stain", "pitting", "cut_paste", "warp")

# A defect's mask covers this share of the image at least / at most. Thin cracks and scratches at
# 128 px cover ~0.3 %, so the floor is lower than the generated dataset's.
MIN_COVERAGE = 0.002
MAX_COVERAGE = 0.10
# Mean absolute change of luminance inside the mask, so that every defect can be seen by a person.
MIN_VISIBILITY = 0.04
FOOTPRINT_LEVEL = 0.35  # footprint weight from which a pixel belongs to the mask
_TRIES = 80
_SHIFT = 4  # fixed-point bits of the OpenCV drawing calls (sub-pixel positions)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

Donor = Callable[[], np.ndarray]
"""Returns another image of the same shape (float32 ``(H, W, 3)`` in [0, 1]) for ``cut_paste``."""


class DefectError(RuntimeError):
    """A painter could not place a visible defect of an acceptable size."""


def paint_defect(
    kind: str, image: np.ndarray, rng: np.random.Generator, donor: Donor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of type ``kind`` on ``image``.

    Args:
        kind: One of :data:`DEFECT_TYPES`.
        image: float32 ``(H, W, 3)`` in [0, 1]; not modified.
        rng: The only source of randomness.
        donor: Source of the pasted material for ``cut_paste`` (required there, unused elsewhere).

    Returns:
        The painted image (float32 ``(H, W, 3)`` in [0, 1]) and its mask (bool ``(H, W)``).

    Raises:
        ValueError: an unknown ``kind``, or ``cut_paste`` without a donor.
        DefectError: no acceptable defect in ``_TRIES`` draws (an image too flat to show it).
    """
    if kind not in _PAINTERS:
        msg = f"defect type {kind!r} unknown; choose from {', '.join(DEFECT_TYPES)}"
        raise ValueError(msg)
    if kind == "cut_paste" and donor is None:
        msg = "cut_paste needs a donor image"
        raise ValueError(msg)
    painter = _PAINTERS[kind]
    for _ in range(_TRIES):
        painted, footprint = painter(image, rng, donor)
        mask = footprint >= FOOTPRINT_LEVEL
        if not MIN_COVERAGE <= float(mask.mean()) <= MAX_COVERAGE:
            continue
        if float(np.abs((painted - image) @ _LUMA)[mask].mean()) >= MIN_VISIBILITY:
            return np.clip(painted, 0.0, 1.0).astype(np.float32), mask
    msg = f"could not paint a visible {kind!r} defect covering {MIN_COVERAGE:.1%}-{MAX_COVERAGE:.0%} of the image"
    raise DefectError(msg)


# ----------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------


def _fx(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _polyline(size: int, points: np.ndarray, thickness: int) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [_fx(points)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _polygon(size: int, points: np.ndarray) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [_fx(points)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _disc(size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    c = tuple(int(v) for v in _fx(centre).ravel())
    r = round(radius * (1 << _SHIFT))
    cv2.circle(canvas, c, r, 255, -1, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _shifted(alpha: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return cv2.warpAffine(alpha, m, alpha.shape[::-1], flags=cv2.INTER_LINEAR, borderValue=0.0)


def _inner_point(size: int, rng: np.random.Generator, margin: float) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, 2)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise, float32 ``(size, size)``, zero mean and unit standard deviation."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (float(field.std()) + 1e-6)


def _polar(size: int, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - np.float32(centre[0]), y - np.float32(centre[1])
    return np.hypot(dx, dy), np.arctan2(dy, dx)


def _lit_rim(alpha: np.ndarray, light: np.ndarray, offset: float) -> np.ndarray:
    """The part of ``alpha`` moved ``offset`` px away from the light that ``alpha`` does not cover."""
    return np.clip(_shifted(alpha, -light[0] * offset, -light[1] * offset) - alpha, 0.0, 1.0)


def _light_direction(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle)])


# ----------------------------------------------------------------------------------------------
# Painters: (image, rng, donor) -> (painted image, footprint weight)
# ----------------------------------------------------------------------------------------------


def _crack(image: np.ndarray, rng: np.random.Generator, _donor: Donor | None) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    unit = size / 128
    thickness = max(1, round(unit))

    def walk(start: np.ndarray, heading: float, steps: int) -> np.ndarray:
        turns = heading + np.cumsum(rng.normal(0, 0.45, steps))
        lengths = rng.uniform(2.5, 4.5, steps) * unit
        moves = np.stack([np.cos(turns), np.sin(turns)], axis=1) * lengths[:, None]
        return start + np.concatenate([np.zeros((1, 2)), np.cumsum(moves, axis=0)])

    trunk = walk(_inner_point(size, rng, 0.15), rng.uniform(0, 2 * np.pi), int(rng.integers(10, 20)))
    alpha = _polyline(size, trunk, thickness)
    for _ in range(int(rng.integers(0, 3))):
        fork = trunk[int(rng.integers(1, len(trunk)))]
        branch = walk(fork, rng.uniform(0, 2 * np.pi), int(rng.integers(4, 9)))
        alpha = np.maximum(alpha, _polyline(size, branch, thickness) * 0.8)
    rim = _lit_rim(alpha, _light_direction(rng), 1.0 * unit)
    darkness = rng.uniform(0.55, 0.8)
    painted = image * (1 - darkness * alpha)[..., None]
    painted = painted + (1 - painted) * (rng.uniform(0.2, 0.4) * rim)[..., None]
    return painted, np.maximum(alpha, rim)


def _scratch(image: np.ndarray, rng: np.random.Generator, _donor: Donor | None) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    start = _inner_point(size, rng, 0.1)
    heading = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 0.65) * size
    end = start + length * np.array([np.cos(heading), np.sin(heading)])
    bend = rng.uniform(-0.25, 0.25) * length * np.array([-np.sin(heading), np.cos(heading)])
    t = np.linspace(0, 1, 33)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * ((start + end) / 2 + bend) + t**2 * end
    thickness = max(1, round(size / 128))
    alpha = np.zeros((size, size), np.float32)
    strength = np.sin(np.pi * np.linspace(0, 1, len(curve) - 1) * 0.9 + 0.05 * np.pi) ** 0.5
    for a, b, s in zip(curve[:-1], curve[1:], strength, strict=True):
        np.maximum(alpha, _polyline(size, np.stack([a, b]), thickness) * s, out=alpha)
    if rng.random() < 0.65:  # a glint: the groove's wall reflects the light
        painted = image + (1 - image) * (rng.uniform(0.55, 0.85) * alpha)[..., None]
    else:
        painted = image * (1 - rng.uniform(0.5, 0.75) * alpha)[..., None]
    # a one-pixel line's anti-aliased halo is part of what is seen: the mask keeps it
    return painted, np.clip(2 * alpha, 0.0, 1.0)


_STAIN_TINTS = np.array(
    [(0.62, 0.45, 0.25), (0.85, 0.75, 0.40), (0.45, 0.45, 0.48), (0.55, 0.60, 0.35), (0.40, 0.28, 0.22)],
    np.float32,
)


def _stain(image: np.ndarray, rng: np.random.Generator, _donor: Donor | None) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    centre = _inner_point(size, rng, 0.15)
    radius = rng.uniform(0.05, 0.12) * size
    dist, theta = _polar(size, centre)
    outline = np.ones_like(theta)
    for k in range(2, 6):  # a few low harmonics: a lobed, not a round, outline
        outline += rng.uniform(0, 0.22 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge = rng.uniform(1.5, 4.0) * size / 128
    alpha = np.clip((radius * outline - dist) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    ring = (4 * alpha * (1 - alpha)) ** 2  # strongest where the film ends: the dried rim
    blurred = cv2.GaussianBlur(image, (0, 0), 1.2)
    wet = image + (blurred - image) * (0.5 * alpha)[..., None]
    tint = _STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))] * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    strength = rng.uniform(0.45, 0.8)
    factor = 1 + (tint - 1) * (strength * alpha)[..., None]
    painted = wet * factor * (1 - rng.uniform(0.1, 0.3) * ring)[..., None]
    return painted, alpha


def _pitting(image: np.ndarray, rng: np.random.Generator, _donor: Donor | None) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    unit = size / 128
    centre = _inner_point(size, rng, 0.15)
    spread = rng.uniform(0.04, 0.09) * size
    light = _light_direction(rng)
    pits = np.zeros((size, size), np.float32)
    rims = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(6, 15))):
        at = centre + rng.normal(0, spread / 2, 2)
        r = rng.uniform(0.9, 2.2) * unit
        pit = _disc(size, at, r)
        np.maximum(pits, pit, out=pits)
        np.maximum(rims, np.clip(_disc(size, at - light * 0.8 * r, r) - pit, 0, 1), out=rims)
    rims *= 1 - pits
    painted = image * (1 - rng.uniform(0.55, 0.8) * pits)[..., None]
    painted = painted + (1 - painted) * (rng.uniform(0.3, 0.5) * rims)[..., None]
    footprint = np.maximum(pits, rims)
    return painted, footprint


def _cut_paste(image: np.ndarray, rng: np.random.Generator, donor: Donor | None) -> tuple[np.ndarray, np.ndarray]:
    assert donor is not None  # paint_defect checks it
    size = image.shape[0]
    centre = _inner_point(size, rng, 0.15)
    n = int(rng.integers(7, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.06, 0.13) * size * rng.uniform(0.55, 1.0, n)
    polygon = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    alpha = cv2.GaussianBlur(_polygon(size, polygon), (0, 0), 0.6)
    source = donor()
    painted = image * (1 - alpha)[..., None] + source * alpha[..., None]
    return painted, alpha


def _warp(image: np.ndarray, rng: np.random.Generator, _donor: Donor | None) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    centre = _inner_point(size, rng, 0.15)
    radius = rng.uniform(0.07, 0.13) * size
    dist, theta = _polar(size, centre)
    # compact support: nothing moves beyond ``radius``, so the change stays inside the footprint
    window = (np.clip(1 - (dist / radius) ** 2, 0, 1) ** 2).astype(np.float32)
    amplitude = rng.uniform(0.25, 0.45) * radius
    cells = max(2, size // 32)
    swirl = rng.uniform(-1, 1)  # share of a rotational (twist) against a radial (dent/bulge) displacement
    radial = (1 - abs(swirl)) * rng.choice([-1.0, 1.0])
    dx = window * amplitude * (radial * np.cos(theta) - swirl * np.sin(theta) + 0.4 * _smooth_field(rng, size, cells))
    dy = window * amplitude * (radial * np.sin(theta) + swirl * np.cos(theta) + 0.4 * _smooth_field(rng, size, cells))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    map_x, map_y = (x + dx).astype(np.float32), (y + dy).astype(np.float32)
    painted = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # a pixel belongs to the defect when its content moved by more than half a pixel
    footprint = np.clip(np.hypot(dx, dy) - 0.15, 0.0, 1.0).astype(np.float32)
    return painted, footprint


_PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator, Donor | None], tuple[np.ndarray, np.ndarray]]] = {
    "crack": _crack,
    "scratch": _scratch,
    "stain": _stain,
    "pitting": _pitting,
    "cut_paste": _cut_paste,
    "warp": _warp,
}
