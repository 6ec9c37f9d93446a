"""Perlin noise and Perlin masks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from memseg.config import SynthesisConfig
from memseg.synthesis.perlin import draw_scales, perlin_mask, perlin_noise


def _reference_noise(angles: np.ndarray, shape: tuple[int, int], res: tuple[int, int]) -> np.ndarray:
    """Per-pixel textbook gradient noise: 4 corner dot products, quintic fade, lerps (float64)."""
    h, w = shape
    step_y, step_x = -(-h // res[0]), -(-w // res[1])
    g0, g1 = np.cos(angles), np.sin(angles)
    out = np.empty(shape)

    def fade(t: float) -> float:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    for y in range(h):
        for x in range(w):
            py, px = y / step_y, x / step_x
            cy, cx = int(py), int(px)
            ty, tx = py - cy, px - cx
            n = {}
            for dy in (0, 1):
                for dx in (0, 1):
                    n[dy, dx] = g0[cy + dy, cx + dx] * (ty - dy) + g1[cy + dy, cx + dx] * (tx - dx)
            a = n[0, 0] + fade(ty) * (n[1, 0] - n[0, 0])
            b = n[0, 1] + fade(ty) * (n[1, 1] - n[0, 1])
            out[y, x] = math.sqrt(2) * (a + fade(tx) * (b - a))
    return out


@pytest.mark.parametrize(("shape", "res"), [((32, 32), (4, 2)), ((30, 21), (4, 8)), ((17, 40), (1, 5))])
def test_noise_matches_per_pixel_reference(shape: tuple[int, int], res: tuple[int, int]) -> None:
    noise = perlin_noise(np.random.default_rng(3), shape, res)
    # The same gradient angles the function drew (first draw of the same seed).
    angles = np.random.default_rng(3).random((res[0] + 1, res[1] + 1), dtype=np.float32) * np.float32(2 * math.pi)
    ref = _reference_noise(angles.astype(np.float64), shape, res)
    assert noise.dtype == np.float32
    assert noise.shape == shape
    np.testing.assert_allclose(noise, ref, atol=1e-5)


def test_noise_is_zero_on_lattice_points_and_bounded() -> None:
    noise = perlin_noise(np.random.default_rng(0), (64, 64), (8, 4))
    np.testing.assert_allclose(noise[::8, ::16], 0.0, atol=1e-6)
    assert np.abs(noise).max() <= 1.0 + 1e-5
    assert noise.std() > 0.1


def test_noise_rejects_bad_resolution() -> None:
    with pytest.raises(ValueError, match="res"):
        perlin_noise(np.random.default_rng(0), (16, 16), (0, 2))
    with pytest.raises(ValueError, match="res"):
        perlin_noise(np.random.default_rng(0), (16, 16), (2, 32))


@pytest.mark.parametrize("shape", [(256, 256), (100, 70), (37, 250), (8, 8)])
def test_mask_binary_float32_right_shape(shape: tuple[int, int]) -> None:
    cfg = SynthesisConfig(perlin_threshold=0.3)
    rng = np.random.default_rng(1)
    masks = [perlin_mask(rng, shape, cfg) for _ in range(20)]
    for m in masks:
        assert m.shape == shape
        assert m.dtype == np.float32
        assert set(np.unique(m)) <= {0.0, 1.0}
    assert any(m.any() for m in masks)
    assert not all(m.all() for m in masks)


def test_mask_coverage_follows_threshold_and_noise_distribution() -> None:
    n, shape = 300, (128, 128)
    coverage = {}
    for thr in (0.3, 0.5, 0.7):
        cfg = SynthesisConfig(perlin_threshold=thr)
        rng = np.random.default_rng(7)
        coverage[thr] = float(np.mean([perlin_mask(rng, shape, cfg).mean() for _ in range(n)]))
    assert coverage[0.3] > coverage[0.5] > coverage[0.7] > 0.0
    # Expected from the noise itself (same scale draws, no rotation): P(noise > 0.5).
    cfg = SynthesisConfig()
    rng = np.random.default_rng(8)
    above = []
    for _ in range(n):
        noise = perlin_noise(rng, shape, draw_scales(rng, shape, cfg))
        above.append((noise > 0.5).mean())
    expected = float(np.mean(above))
    assert 0.01 < expected < 0.2
    assert expected / 1.5 < coverage[0.5] < expected * 1.5


def test_mask_equals_thresholded_noise_without_rotation() -> None:
    cfg = SynthesisConfig(perlin_min_scale_exp=2, perlin_max_scale_exp=3, perlin_rotation_deg=0.0, perlin_threshold=0.2)
    mask = perlin_mask(np.random.default_rng(5), (64, 48), cfg)
    rng = np.random.default_rng(5)
    assert list(rng.integers(2, 3, size=2)) == [2, 2]  # the scale draw: 2**2 = 4 per axis
    expected = (perlin_noise(rng, (64, 48), (4, 4)) > 0.2).astype(np.float32)
    np.testing.assert_array_equal(mask, expected)


def test_rotation_changes_the_mask() -> None:
    base = SynthesisConfig(perlin_rotation_deg=0.0, perlin_threshold=0.3)
    rotated = SynthesisConfig(perlin_rotation_deg=90.0, perlin_threshold=0.3)
    a = perlin_mask(np.random.default_rng(11), (64, 64), base)
    b = perlin_mask(np.random.default_rng(11), (64, 64), rotated)
    assert not np.array_equal(a, b)


def _replayed_angle(seed: int, shape: tuple[int, int], cfg: SynthesisConfig, *, ridge: bool) -> float:
    """The rotation angle ``perlin_mask(default_rng(seed), shape, cfg)`` draws: its stream replayed."""
    rng = np.random.default_rng(seed)
    if ridge:
        rng.random()  # the mask-kind draw
    res = draw_scales(rng, shape, cfg)
    if ridge:
        res = (min(res[0], 8), min(res[1], 8))
    perlin_noise(rng, shape, res)
    return float(rng.uniform(-cfg.perlin_rotation_deg, cfg.perlin_rotation_deg))


def _rotated_in(shape: tuple[int, int], angle: float, margin: float = 1.0) -> np.ndarray:
    """Pixels whose source, before a rotation by ``angle`` about the centre, lies more than ``margin``
    px outside the image: the corners a rotation brings in from beyond the border."""
    h, w = shape
    inverse = cv2.invertAffineTransform(cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0))
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    sy = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    return (sx < -margin) | (sx > w - 1 + margin) | (sy < -margin) | (sy > h - 1 + margin)


@pytest.mark.parametrize("ridge", [False, True], ids=["blobs", "thin_lines"])
def test_rotated_perlin_mask_has_no_anomaly_in_the_rotated_in_corners(ridge: bool) -> None:
    shape = (64, 64)
    # A threshold near 0 marks about half of the noise anomalous: a non-zero fill would show up.
    cfg = SynthesisConfig(
        perlin_rotation_deg=90.0, perlin_threshold=0.01, ridge_mask_probability=1.0 if ridge else 0.0,
        ridge_mask_width=0.2,
    )
    corner_pixels, anomalous_elsewhere, near_45 = 0, 0.0, 0
    for seed in range(16):
        mask = perlin_mask(np.random.default_rng(seed), shape, cfg)
        angle = _replayed_angle(seed, shape, cfg, ridge=ridge)
        corners = _rotated_in(shape, angle)
        assert not mask[corners].any(), (seed, angle)
        corner_pixels += int(corners.sum())
        anomalous_elsewhere += float(mask[~corners].sum())
        near_45 += 30.0 < abs(angle) < 60.0
    assert near_45 >= 2 and corner_pixels > 4 * shape[0] * shape[1] // 10  # the corners were large
    assert anomalous_elsewhere > 0


def test_scales_per_axis_in_range_and_independent() -> None:
    cfg = SynthesisConfig(perlin_min_scale_exp=1, perlin_max_scale_exp=4)
    rng = np.random.default_rng(0)
    draws = [draw_scales(rng, (256, 256), cfg) for _ in range(200)]
    assert {s for d in draws for s in d} == {2, 4, 8}
    assert any(sy != sx for sy, sx in draws)
    # Capped at the axis size for tiny images.
    small = SynthesisConfig(perlin_min_scale_exp=5, perlin_max_scale_exp=6)
    assert draw_scales(np.random.default_rng(0), (8, 256), small) == (8, 32)


def test_mask_seeded_equality_and_different_seeds_differ() -> None:
    cfg = SynthesisConfig(perlin_threshold=0.3)
    a = perlin_mask(np.random.default_rng(42), (96, 96), cfg)
    b = perlin_mask(np.random.default_rng(42), (96, 96), cfg)
    c = perlin_mask(np.random.default_rng(43), (96, 96), cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
