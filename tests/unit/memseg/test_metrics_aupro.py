"""AUPRO: hand-computed cases, 8-connectivity, the FPR limit, and a slow reference on random blobs."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from memseg.metrics import aupro


def _two_images() -> np.ndarray:
    """Image 0: region R1 of 2 pixels; image 1: region R2 of 4 pixels; 26 normal pixels."""
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 0, 0:2] = 1
    masks[1, 2:4, 2:4] = 1
    return masks


def test_perfect_map_scores_one() -> None:
    masks = _two_images()
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert aupro(masks, masks * 0.6 + 0.2, fpr_limit=1.0) == pytest.approx(1.0)


def test_one_region_high_the_other_low() -> None:
    # R1 at 1.0, half the normal pixels at 0.5, R2 at 0.2, the other normal pixels at 0.
    # Curve: (0,0) -> (0,0.5) [R1] -> (0.5,0.5) [13 normal] -> (0.5,1) [R2] -> (1,1).
    masks = _two_images()
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[masks == 1] = 0.2
    maps[0][masks[0] == 1] = 1.0
    normal = np.argwhere(masks == 0)[:13]
    maps[tuple(normal.T)] = 0.5
    assert aupro(masks, maps) == pytest.approx(0.5)  # flat 0.5 up to FPR 0.3
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_interpolation_at_the_limit() -> None:
    # R1 at 1.0, half of R2 at 0.8, everything else 0: (0,0) -> (0,0.5) -> (0,0.75) -> (1,1).
    # PRO at FPR 0.3 = 0.75 + 0.3 * 0.25 = 0.825; area = 0.3 * (0.75 + 0.825) / 2.
    masks = _two_images()
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0][masks[0] == 1] = 1.0
    maps[1, 2, 2:4] = 0.8
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.3 * (0.75 + 0.825) / 2 / 0.3)
    assert aupro(masks, maps, fpr_limit=0.1) == pytest.approx(0.1 * (0.75 + 0.775) / 2 / 0.1)


def test_regions_are_eight_connected() -> None:
    # A diagonal pair is ONE region: covering one of its pixels and all of B gives (0.5 + 1) / 2,
    # not the (1 + 0 + 1) / 3 of 4-connectivity.
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1
    masks[0, 5:7, 5] = 1
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 0, 0] = 1.0
    maps[0, 5:7, 5] = 1.0
    # Curve (0,0) -> (0,0.75) -> (1,1); PRO(0.3) = 0.825.
    assert aupro(masks, maps) == pytest.approx((0.75 + 0.825) / 2)


def test_normal_pixels_of_good_images_count_as_false_positives() -> None:
    masks = np.concatenate([_two_images(), np.zeros((1, 4, 4), dtype=np.uint8)])
    maps = masks.astype(np.float32) * 0.5
    clean = aupro(masks, maps)
    maps[2] = 0.9  # a good image scored above every defect
    assert clean == pytest.approx(1.0)
    assert aupro(masks, maps) < 0.9


def test_undefined_and_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no anomalous region"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(_two_images(), np.zeros((2, 4, 4)), fpr_limit=0.0)
    with pytest.raises(ValueError, match="shape"):
        aupro(_two_images(), np.zeros((2, 4, 5)))


# ---- slow reference: flood fill, explicit thresholds, segment-by-segment integration ----------


def _components(mask: np.ndarray) -> list[np.ndarray]:
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        region = np.zeros(mask.shape, dtype=bool)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(region)
    return regions


def _reference_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[list[float], list[float]]:
    regions = [(i, r) for i in range(len(masks)) for r in _components(masks[i] > 0)]
    normal = masks == 0
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        xs.append((predicted & normal).sum() / normal.sum())
        ys.append(np.mean([predicted[i][r].mean() for i, r in regions]))
    return xs, ys


def _reference_area(xs: list[float], ys: list[float], limit: float) -> float:
    area = 0.0
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:], strict=False):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
            break
    return area / limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference_on_random_blobs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 24, 24), dtype=np.uint8)
    for i in range(4):  # image 4 stays good
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, 20, 2)
            masks[i, y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = 1
        masks[i] |= (rng.random((24, 24)) < 0.02).astype(np.uint8)  # speckles, some diagonal neighbours
    maps = 0.6 * rng.random(masks.shape) + 0.4 * masks * rng.random(masks.shape)
    # Quantised so that normal and anomalous pixels tie; seed 1 very coarsely.
    maps = (np.round(maps * (20 if seed == 1 else 300)) / (20 if seed == 1 else 300)).astype(np.float32)
    xs, ys = _reference_curve(masks, maps)
    for limit in (0.05, 0.3, 0.77, 1.0):
        expected = _reference_area(xs, ys, limit)
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9), limit
