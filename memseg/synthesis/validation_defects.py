"""Held-out validation defects: a painter that shares nothing with the training synthesis.

Why a second process: when the validation anomalies come from the training synthesis (Perlin-shaped
masks filled with a DTD/procedural texture or a grid-shuffled copy of the image, transparency
blending), checkpoint and trial selection reward whatever fits that synthesis, and a sweep can then
choose a configuration that is worse on real defects. ``data.val_anomaly_source=held_out`` draws the
validation anomalies with this painter instead (see docs/model.md, "Validation and selection").

Why not the test's own defect processes either: a validation set drawn from the test's generator
would flatter the selection (it would be tuned to the test distribution, the thing it must
predict without seeing). So the families here are kept geometrically and photometrically apart
from both the training synthesis and the test-defect generators of ``memseg data synth``
(wandering thin scratches, dark holes with a rim, noisy-edged stains of a contrasting colour, hue
rotations, missing/misplaced parts) and of the realistic benchmark (drawn cracks and scratches,
stains, pitting, cut-paste from other photographs, local warps):

* ``shade``: a convex polygon, feathered, whose brightness is scaled by a smooth linear ramp
  (a dent or a shading fault; the surface structure stays);
* ``smear``: an ellipse where the image is motion-blurred along one direction (a smudge);
* ``tint``: an ellipse with a smooth radial falloff that adds a colour cast (in grey images a
  brightness change);
* ``patch``: a convex polygon filled with another validation image of the same category, rotated by
  a multiple of 90 degrees, mirrored and shifted (a foreign piece of the same surface);
* ``streak``: a straight, wide, feathered band with a constant gain (a roller or guide mark);
* ``grain``: an ellipse of coarse speckle noise (contamination).

Masks are polygons, ellipses and straight bands (never Perlin noise), multiplied by the category's
foreground mask where the training synthesis uses one (the same :func:`foreground_for` rule), and a
draw is kept only when it covers ``min_coverage`` to ``max_coverage`` of the image and changes the
pixels under its mask visibly. All randomness comes from the generator passed in, so a seed fixes
the set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from memseg.config import SynthesisConfig
from memseg.synthesis.foreground import ForegroundRule, foreground_for

FAMILIES = ("shade", "smear", "tint", "patch", "streak", "grain")
MIN_COVERAGE = 0.004
MAX_COVERAGE = 0.10
# Mean absolute change under the mask (images in [0, 1]) below which a draw is invisible and redrawn.
MIN_VISIBILITY = 0.05
_FX = 4  # fixed-point bits of the OpenCV drawing calls (sub-pixel vertices)


@dataclass(frozen=True)
class PaintedDefect:
    """One painted validation anomaly.

    Attributes:
        image: uint8 ``(H, W, 3)`` RGB.
        mask: float32 ``(H, W)`` in {0, 1}; all zeros when nothing could be painted.
        kind: the family (one of :data:`FAMILIES`), or ``""`` when nothing was painted.
    """

    image: np.ndarray
    mask: np.ndarray
    kind: str


class ValidationDefectPainter:
    """Paints held-out validation defects (see the module docstring for the families).

    Args:
        foreground: the category's foreground rule, or None to paint anywhere.
        donors: uint8 ``(H, W, 3)`` images of the same category for the ``patch`` family (usually the
            clean validation images); without donors the image itself is the donor.
        families: which families to draw from (uniformly).
        attempts: draws before giving up on a visible defect within the coverage range.
        min_coverage: smallest share of the image a defect covers.
        max_coverage: largest share of the image a defect covers.
    """

    def __init__(
        self,
        foreground: ForegroundRule | None,
        donors: Sequence[np.ndarray] = (),
        *,
        families: Sequence[str] = FAMILIES,
        attempts: int = 40,
        min_coverage: float = MIN_COVERAGE,
        max_coverage: float = MAX_COVERAGE,
    ) -> None:
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown or not families:
            msg = f"ValidationDefectPainter: families must be a non-empty subset of {FAMILIES}, got {list(families)}"
            raise ValueError(msg)
        if attempts < 1:
            msg = f"ValidationDefectPainter: attempts must be >= 1, got {attempts}"
            raise ValueError(msg)
        if not 0.0 < min_coverage < max_coverage <= 1.0:
            msg = (
                "ValidationDefectPainter: need 0 < min_coverage < max_coverage <= 1, "
                f"got {min_coverage}, {max_coverage}"
            )
            raise ValueError(msg)
        self.foreground = foreground
        self.donors = [np.asarray(d) for d in donors]
        self.families = tuple(families)
        self.attempts = attempts
        self.min_coverage = min_coverage
        self.max_coverage = max_coverage

    @classmethod
    def for_category(
        cls, cfg: SynthesisConfig, category: str, donors: Sequence[np.ndarray] = ()
    ) -> ValidationDefectPainter:
        """A painter with the category's foreground rule, resolved as the training synthesis resolves it."""
        return cls(foreground_for(cfg, category), donors)

    def __call__(self, image_u8: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` like :class:`memseg.synthesis.AnomalyGenerator`, so either can fill a validation set."""
        painted = self.paint(image_u8, rng)
        return painted.image, painted.mask

    def paint(self, image_u8: np.ndarray, rng: np.random.Generator) -> PaintedDefect:
        """Paint one defect on a copy of ``image_u8``.

        Returns the image unchanged with an empty mask when the image has no foreground or no draw
        within ``attempts`` was visible and within the coverage range.
        """
        if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[2] != 3:
            msg = f"ValidationDefectPainter: expected a uint8 (H, W, 3) image, got {image_u8.dtype} {image_u8.shape}"
            raise ValueError(msg)
        h, w = image_u8.shape[:2]
        allowed = self.foreground(image_u8) if self.foreground is not None else np.ones((h, w), np.float32)
        centres = np.argwhere(cv2.erode(allowed, np.ones((3, 3), np.uint8)) > 0.5)
        if len(centres) == 0:
            centres = np.argwhere(allowed > 0.5)
        if len(centres) == 0:
            return PaintedDefect(image_u8.copy(), np.zeros((h, w), np.float32), "")
        clean = image_u8.astype(np.float32) / 255.0
        # Grey categories (read as RGB with equal channels) stay grey: a coloured defect would be trivial.
        gray = bool((image_u8[..., :1] == image_u8).all())
        for _ in range(self.attempts):
            kind = self.families[int(rng.integers(len(self.families)))]
            cy, cx = centres[int(rng.integers(len(centres)))]
            centre = (float(cx) + 0.5, float(cy) + 0.5)
            alpha, target = _FAMILY_PAINTERS[kind](self, clean, centre, rng)
            alpha *= allowed
            mask = alpha > 0.5
            if not self.min_coverage <= float(mask.mean()) <= self.max_coverage:
                continue
            out = clean + alpha[..., None] * (target - clean)
            if gray:
                out = np.repeat(_luma(out)[..., None], 3, axis=2)
            out_u8 = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
            change = np.abs(out_u8.astype(np.float32) - image_u8.astype(np.float32)).max(axis=2) / 255.0
            if float(change[mask].mean()) < MIN_VISIBILITY:
                continue
            return PaintedDefect(out_u8, mask.astype(np.float32), kind)
        return PaintedDefect(image_u8.copy(), np.zeros((h, w), np.float32), "")

    # --- families: each returns (alpha (H, W) float32 in [0, 1], target (H, W, 3) float32) -----------

    def _shade(self, clean: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> _Painted:
        size = clean.shape[0]
        r = _radius(rng, size)
        alpha = _feather(_polygon(size, centre, r, rng), rng)
        theta = float(rng.uniform(0, 2 * np.pi))
        x, y = _coords(size)
        ramp = ((x - centre[0]) * np.cos(theta) + (y - centre[1]) * np.sin(theta)) / r
        darker = rng.random() < 0.5
        base = float(rng.uniform(0.45, 0.7)) if darker else float(rng.uniform(1.35, 1.7))
        gain = base * (1.0 + float(rng.uniform(0.15, 0.35)) * np.clip(ramp, -1, 1))
        # An additive part too, so a black surface can still be lightened (a gain alone leaves 0 at 0).
        offset = (float(np.mean(gain)) - 1.0) * 0.15
        return alpha, np.clip(clean * gain[..., None] + offset, 0, 1)

    def _smear(self, clean: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> _Painted:
        size = clean.shape[0]
        alpha = _feather(_ellipse(size, centre, _radius(rng, size), rng), rng)
        length = max(3, round(float(rng.uniform(0.08, 0.2)) * size))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D(((length - 1) / 2.0, (length - 1) / 2.0), float(rng.uniform(0, 180)), 1.0)
        kernel = np.asarray(cv2.warpAffine(kernel, rot, (length, length)), np.float32)
        kernel /= max(float(kernel.sum()), 1e-6)
        return alpha, cv2.filter2D(clean, -1, kernel, borderType=cv2.BORDER_REFLECT)

    def _tint(self, clean: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> _Painted:
        size = clean.shape[0]
        r = _radius(rng, size)
        x, y = _coords(size)
        angle, ratio = float(rng.uniform(0, np.pi)), float(rng.uniform(0.6, 1.0))
        dx, dy = x - centre[0], y - centre[1]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ratio
        dist = np.hypot(u, v) / r
        # Flat centre, smooth cosine falloff over the outer 40 %: no hard rim to find.
        alpha = np.where(dist < 0.6, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip((dist - 0.6) / 0.4, 0, 1))))
        cast = rng.normal(0, 1, 3).astype(np.float32)
        cast /= max(float(np.linalg.norm(cast)), 1e-6)
        cast *= float(rng.uniform(0.2, 0.4))
        if float(np.mean(cast)) < 0 and float(clean.mean()) < 0.15:
            cast = -cast  # a dark surface cannot get darker: cast the other way
        return alpha.astype(np.float32), np.clip(clean + cast, 0, 1)

    def _patch(self, clean: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> _Painted:
        size = clean.shape[0]
        r = _radius(rng, size)
        alpha = _feather(_polygon(size, centre, r, rng), rng, sigma=(0.3, 0.8))
        donor = clean
        if self.donors:
            pick = self.donors[int(rng.integers(len(self.donors)))]
            if pick.shape == (*clean.shape[:2], 3):
                donor = pick.astype(np.float32) / 255.0
        donor = np.rot90(donor, int(rng.integers(1, 4)))
        if rng.random() < 0.5:
            donor = donor[:, ::-1]
        shift = rng.uniform(1.0, 3.0, 2) * r * rng.choice([-1.0, 1.0], 2)
        donor = np.roll(donor, (int(shift[0]), int(shift[1])), axis=(0, 1))
        return alpha, np.ascontiguousarray(donor)

    def _streak(self, clean: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> _Painted:
        size = clean.shape[0]
        theta = float(rng.uniform(0, np.pi))
        half = float(rng.uniform(0.15, 0.4)) * size
        d = np.array([np.cos(theta), np.sin(theta)]) * half
        width = max(2, round(float(rng.uniform(0.025, 0.05)) * size))
        band = np.zeros((size, size), np.uint8)
        p0, p1 = np.array(centre) - d, np.array(centre) + d
        cv2.line(band, _fx(p0), _fx(p1), 255, width, cv2.LINE_AA, _FX)
        alpha = _feather(band.astype(np.float32) / 255.0, rng)
        gain = float(rng.uniform(0.5, 0.7)) if rng.random() < 0.5 else float(rng.uniform(1.4, 1.8))
        return alpha, np.clip(clean * gain + (gain - 1.0) * 0.1, 0, 1)

    def _grain(self, clean: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> _Painted:
        size = clean.shape[0]
        alpha = _feather(_ellipse(size, centre, _radius(rng, size), rng), rng)
        cell = int(rng.integers(1, 3))  # speckles of 1-2 px
        coarse = rng.normal(0, float(rng.uniform(0.12, 0.22)), (-(-size // cell), -(-size // cell), 1))
        noise = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:size, :size].astype(np.float32)
        return alpha, np.clip(clean + noise, 0, 1)


_Painted = tuple[np.ndarray, np.ndarray]
_FAMILY_PAINTERS: dict[
    str, Callable[[ValidationDefectPainter, np.ndarray, tuple[float, float], np.random.Generator], _Painted]
] = {
    "shade": ValidationDefectPainter._shade,
    "smear": ValidationDefectPainter._smear,
    "tint": ValidationDefectPainter._tint,
    "patch": ValidationDefectPainter._patch,
    "streak": ValidationDefectPainter._streak,
    "grain": ValidationDefectPainter._grain,
}


def _radius(rng: np.random.Generator, size: int) -> float:
    """A defect radius of 5-12 % of the image (about 0.8-4.5 % of its area for a disc)."""
    return float(rng.uniform(0.05, 0.12)) * size


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in pixels, float32 ``(H, W)`` each."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return x, y


def _fx(point: np.ndarray | tuple[float, float]) -> tuple[int, int]:
    return round(float(point[0]) * (1 << _FX)), round(float(point[1]) * (1 << _FX))


def _polygon(size: int, centre: tuple[float, float], r: float, rng: np.random.Generator) -> np.ndarray:
    """A filled convex polygon of 3-8 vertices around ``centre`` (float32 ``(H, W)`` in [0, 1])."""
    n = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.7, 1.0, n)
    pts = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
    hull = cv2.convexHull(np.round(pts * (1 << _FX)).astype(np.int32))
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [hull], 255, cv2.LINE_AA, _FX)
    return canvas.astype(np.float32) / 255.0


def _ellipse(size: int, centre: tuple[float, float], r: float, rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse (axis ratio 0.4-1) around ``centre`` (float32 ``(H, W)`` in [0, 1])."""
    axes = (r, r * float(rng.uniform(0.4, 1.0)))
    canvas = np.zeros((size, size), np.uint8)
    cv2.ellipse(canvas, _fx(centre), _fx(axes), float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, _FX)
    return canvas.astype(np.float32) / 255.0


def _feather(region: np.ndarray, rng: np.random.Generator, sigma: tuple[float, float] = (0.6, 1.6)) -> np.ndarray:
    """Soften a region's rim with a Gaussian of a drawn width."""
    return cv2.GaussianBlur(region, (0, 0), float(rng.uniform(*sigma)))


def _luma(image: np.ndarray) -> np.ndarray:
    return (image @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)
