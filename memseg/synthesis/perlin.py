"""Perlin-noise anomaly masks (the DRAEM/TooTouch ``rand_perlin_2d_np`` recipe; docs/model.md, "Anomaly synthesis").

The noise is classic gradient Perlin noise: unit gradients on a ``(res_y + 1, res_x + 1)`` lattice,
dot products with the offsets to the four surrounding lattice points, and quintic-fade
interpolation, scaled by sqrt(2) as in DRAEM so that values lie roughly in [-1, 1].

Why it is fast: inside a cell the interpolated value is a sum of products of a function of the row
and a function of the column, so the whole field is two small matrix products::

    noise = sqrt(2) * (Dy @ G0 @ Wx.T + Wy @ G1 @ Dx.T)

where ``W[p, k]`` is the fade weight of lattice line ``k`` for pixel ``p`` (non-zero for the two
lines around the pixel) and ``D[p, k] = W[p, k] * offset``; ``G0``/``G1`` are the row/column
components of the lattice gradients. ``W`` and ``D`` depend only on the (size, res) of an axis and
are cached, so a mask costs a few small GEMMs, one ``cv2.warpAffine`` and one threshold, with no
per-pixel Python and no ``(H, W, 2)`` temporaries. The result equals DRAEM's field for sizes
divisible by the scale; other sizes behave as "generate at the next multiple and crop".
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from memseg.config import SynthesisConfig

_SQRT2 = np.float32(math.sqrt(2.0))

# OpenBLAS runs a GEMM on several threads once m*n*k exceeds 65536 * 4. For these small products
# the threads cost far more than they save, and on a busy machine (DataLoader workers, other jobs)
# their spin-waiting made masks about 10x slower in measurements here. Products are therefore cut
# into row blocks below that size, which keeps every call single-threaded whatever the BLAS setting.
_GEMM_SINGLE_THREAD_MNK = 65536 * 4 - 1
# Thin-line masks (synthesis.ridge_mask_probability): the finest lattice whose zero crossings still
# read as separate strokes, and the level of the coarse region that keeps a part of them.
_RIDGE_MAX_RES = 8
_RIDGE_REGION_THRESHOLD = 0.2


def _matmul_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[:] = a @ b`` computed in row blocks small enough for single-threaded BLAS."""
    rows = max(1, _GEMM_SINGLE_THREAD_MNK // (a.shape[1] * b.shape[1]))
    for start in range(0, a.shape[0], rows):
        np.matmul(a[start : start + rows], b, out=out[start : start + rows])
    return out


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@lru_cache(maxsize=128)
def _axis_basis(n: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Fade weights ``W`` and weighted offsets ``D`` of one axis, both ``(n, res + 1)`` float32.

    The lattice spacing is ``ceil(n / res)`` pixels, which is the same as generating the noise at the
    next multiple of ``res`` and cropping to ``n``.
    """
    step = -(-n // res)  # ceil: pixels per lattice cell
    pos = np.arange(n, dtype=np.float64) / step
    cell = np.floor(pos).astype(np.int64)
    t = pos - cell
    f = _fade(t)
    rows = np.arange(n)
    weights = np.zeros((n, res + 1), dtype=np.float64)
    offsets = np.zeros((n, res + 1), dtype=np.float64)
    weights[rows, cell] = 1.0 - f
    weights[rows, cell + 1] = f
    offsets[rows, cell] = (1.0 - f) * t
    offsets[rows, cell + 1] = f * (t - 1.0)
    weights = weights.astype(np.float32)
    offsets = offsets.astype(np.float32)
    # Cached arrays are shared between calls: make accidental in-place edits fail loudly.
    weights.flags.writeable = False
    offsets.flags.writeable = False
    return weights, offsets


@lru_cache(maxsize=128)
def _row_basis(n: int, res: int) -> np.ndarray:
    """``[D | W]`` of the row axis, ``(n, 2 * (res + 1))`` float32, the left factor of the product."""
    weights, offsets = _axis_basis(n, res)
    left = np.ascontiguousarray(np.concatenate([offsets, weights], axis=1))
    left.flags.writeable = False
    return left


@lru_cache(maxsize=128)
def _col_basis(n: int, res: int) -> np.ndarray:
    """``stack(W.T, D.T)`` of the column axis, ``(2, res + 1, n)`` float32."""
    weights, offsets = _axis_basis(n, res)
    right = np.ascontiguousarray(np.stack([weights.T, offsets.T]))
    right.flags.writeable = False
    return right


def perlin_noise(rng: np.random.Generator, shape: tuple[int, int], res: tuple[int, int]) -> np.ndarray:
    """2D gradient Perlin noise.

    Args:
        rng: Source of the lattice gradient angles (``(res_y + 1) * (res_x + 1)`` draws).
        shape: Output size ``(H, W)``.
        res: Lattice cells per axis ``(res_y, res_x)``, each in ``[1, size]``; sizes need not be
            divisible by it.

    Returns:
        float32 ``(H, W)`` noise, roughly in [-1, 1], 0 on lattice points.

    Raises:
        ValueError: when a size or a resolution is out of range.
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1:
        msg = f"perlin_noise: shape must be positive, got {shape}"
        raise ValueError(msg)
    if not (1 <= ry <= h and 1 <= rx <= w):
        msg = f"perlin_noise: res {res} must be between 1 and the shape {shape} on each axis"
        raise ValueError(msg)
    angles = rng.random((ry + 1, rx + 1), dtype=np.float32) * np.float32(2.0 * math.pi)
    # grads[0] pairs with the row offset, grads[1] with the column offset (DRAEM's cos/sin order).
    grads = np.stack([np.cos(angles), np.sin(angles)])
    # right = [G0 @ Wx.T ; G1 @ Dx.T], (2 * (ry + 1), W)
    col = _col_basis(w, rx)
    right = np.empty((2, ry + 1, w), dtype=np.float32)
    _matmul_rows(grads[0], col[0], right[0])
    _matmul_rows(grads[1], col[1], right[1])
    noise = _matmul_rows(_row_basis(h, ry), right.reshape(2 * (ry + 1), w), np.empty((h, w), dtype=np.float32))
    noise *= _SQRT2
    return noise


def draw_scales(rng: np.random.Generator, shape: tuple[int, int], cfg: SynthesisConfig) -> tuple[int, int]:
    """Lattice resolution per axis: ``2**e`` with ``e`` drawn independently per axis from the
    integers in ``[perlin_min_scale_exp, perlin_max_scale_exp)``, capped at the axis size."""
    exps = rng.integers(cfg.perlin_min_scale_exp, cfg.perlin_max_scale_exp, size=2)
    return min(2 ** int(exps[0]), int(shape[0])), min(2 ** int(exps[1]), int(shape[1]))


def perlin_mask(rng: np.random.Generator, shape: tuple[int, int], cfg: SynthesisConfig) -> np.ndarray:
    """A binary Perlin anomaly mask M_p.

    Draws the per-axis scale (see :func:`draw_scales`), generates the noise, rotates it by
    ``U[-perlin_rotation_deg, +perlin_rotation_deg]`` degrees about the centre (linear
    interpolation; the rotated-in corners are filled with 0, so they hold no anomaly, as in DRAEM's
    and the authors' recipe), and keeps the pixels whose noise is above ``perlin_threshold``. With
    probability ``ridge_mask_probability`` it keeps thin lines instead (:func:`_ridge_mask`,
    lattices of at most 8 cells per axis).

    Args:
        rng: The only source of randomness (same seed, same mask).
        shape: ``(H, W)``.
        cfg: The synthesis config.

    Returns:
        float32 ``(H, W)`` with values in {0, 1}.
    """
    h, w = int(shape[0]), int(shape[1])
    # The draw is guarded so that with the option off the random stream is the paper recipe's.
    ridge = cfg.ridge_mask_probability > 0.0 and rng.random() < cfg.ridge_mask_probability
    res = draw_scales(rng, (h, w), cfg)
    if ridge:
        # Coarse lattices only: at fine ones the zero crossings form a maze, not a line.
        res = (min(res[0], _RIDGE_MAX_RES), min(res[1], _RIDGE_MAX_RES))
    noise = perlin_noise(rng, (h, w), res)
    # Always draw the angle so the random stream does not depend on the rotation range.
    angle = float(rng.uniform(-cfg.perlin_rotation_deg, cfg.perlin_rotation_deg))
    inside: np.ndarray | None = None
    if angle != 0.0:
        rot = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        # 0 is below every threshold (perlin_threshold > 0), so the rotated-in corners are normal.
        noise = cv2.warpAffine(
            noise, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
        )
        if ridge:
            # For thin lines 0 is a zero crossing, i.e. a line: the corners are cut out explicitly,
            # with the pixels that the rotation only partly covers.
            covered = cv2.warpAffine(
                np.ones((h, w), np.float32), rot, (w, h), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
            )
            inside = covered > np.float32(0.999)
    if ridge:
        return _ridge_mask(rng, noise, cfg, inside)
    _, mask = cv2.threshold(noise, cfg.perlin_threshold, 1.0, cv2.THRESH_BINARY)
    return mask


def _ridge_mask(
    rng: np.random.Generator, noise: np.ndarray, cfg: SynthesisConfig, inside: np.ndarray | None = None
) -> np.ndarray:
    """Thin lines: the pixels within ``ridge_mask_width`` of a zero crossing of ``noise``, kept only
    inside a coarse Perlin region so that a mask holds a few strokes rather than a network over the
    whole image, and only where ``inside`` (the pixels the rotation covers; None = all). Realistic
    defects are often thin (cracks, scratches), which thresholded blobs never are (see docs/model.md,
    "Anomaly synthesis")."""
    lines = np.abs(noise) < np.float32(cfg.ridge_mask_width)
    if inside is not None:
        lines &= inside
    region = perlin_noise(rng, (noise.shape[0], noise.shape[1]), (2, 2)) > np.float32(_RIDGE_REGION_THRESHOLD)
    return (lines & region).astype(np.float32)
