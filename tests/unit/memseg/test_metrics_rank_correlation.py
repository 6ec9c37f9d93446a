"""Spearman rank correlation of validation and test across trials: equal to scipy, ties, NaN cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from memseg.metrics.rank_correlation import (
    MIN_TRIALS,
    average_ranks,
    rank_correlation_by_category,
    spearman,
    val_test_rank_correlation,
)

CASES = {
    "no_ties": ([0.81, 0.9, 0.85, 0.7, 0.95, 0.6], [0.82, 0.73, 0.84, 0.7, 0.8, 0.65]),
    "ties_in_x": ([1, 2, 2, 3, 5, 5, 5], [5, 6, 7, 7, 1, 0, 2]),
    "ties_in_both": ([0.5, 0.5, 0.7, 0.7, 0.9, 0.1], [0.3, 0.3, 0.3, 0.8, 0.8, 0.1]),
    "reversed": ([1, 2, 3, 4, 5], [10, 8, 6, 4, 2]),
    "three_points": ([0.2, 0.1, 0.3], [0.1, 0.3, 0.2]),
    "the_issue_sized": ([0.814, 0.899, 0.849, 0.83, 0.87, 0.86], [0.948, 0.954, 0.953, 0.95, 0.949, 0.951]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_spearman_equals_scipy(name: str) -> None:
    x, y = CASES[name]
    got = spearman(x, y)
    assert got.n == len(x)
    assert got.reason == ""
    assert got.rho == pytest.approx(float(spearmanr(x, y).statistic), abs=1e-12)


def test_spearman_equals_scipy_on_random_data_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 30))
        x, y = rng.integers(0, 5, n).astype(float), rng.integers(0, 5, n).astype(float)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert spearman(x, y).rho == pytest.approx(float(spearmanr(x, y).statistic), abs=1e-12)


def test_average_ranks_share_the_mean_rank_on_ties() -> None:
    values = [0.3, 0.1, 0.3, 0.9, 0.3, 0.1]
    np.testing.assert_array_equal(average_ranks(values), [4.0, 1.5, 4.0, 6.0, 4.0, 1.5])
    np.testing.assert_array_equal(average_ranks(values), rankdata(values))


def test_a_monotone_but_nonlinear_relation_is_a_perfect_rank_correlation() -> None:
    x = np.array([0.1, 0.2, 0.5, 0.9, 0.95])
    assert spearman(x, np.exp(10 * x)).rho == pytest.approx(1.0)
    assert spearman(x, -(x**3)).rho == pytest.approx(-1.0)


def test_too_few_pairs_give_nan_with_the_reason() -> None:
    result = spearman([0.1, 0.2], [0.3, 0.4])
    assert math.isnan(result.rho)
    assert not result.defined
    assert result.n == 2
    assert f"fewer than {MIN_TRIALS} pairs: 2" in result.reason


def test_a_constant_side_gives_nan_with_the_reason() -> None:
    result = spearman([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4])
    assert math.isnan(result.rho)
    assert result.n == 4
    assert "first side is constant" in result.reason
    assert "both sides are constant" in spearman([1, 1, 1], [2, 2, 2]).reason
    assert "second side is constant" in spearman([1, 2, 3], [2, 2, 2]).reason


def test_non_finite_pairs_are_left_out_and_not_counted() -> None:
    x = [0.1, math.nan, 0.3, 0.4, 0.2, math.inf]
    y = [0.2, 0.5, 0.1, 0.4, 0.3, 0.9]
    result = spearman(x, y)
    assert result.n == 4
    assert result.rho == pytest.approx(float(spearmanr([0.1, 0.3, 0.4, 0.2], [0.2, 0.1, 0.4, 0.3]).statistic))
    short = spearman([0.1, math.nan, 0.3], [0.2, 0.5, 0.1])
    assert math.isnan(short.rho)
    assert "1 left out" in short.reason


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


def test_val_test_pairs_give_rho_and_the_trial_count() -> None:
    pairs = [(0.814, 0.492), (0.899, 0.441), (0.849, 0.602), (0.83, 0.5), (math.nan, 0.7)]
    result = val_test_rank_correlation(pairs)
    assert result.n == 4  # the trial without a validation figure is left out
    assert result.rho == pytest.approx(float(spearmanr([0.814, 0.899, 0.849, 0.83], [0.492, 0.441, 0.602, 0.5]).statistic))
    empty = val_test_rank_correlation([])
    assert math.isnan(empty.rho)
    assert empty.n == 0


def test_by_category_keeps_categories_apart() -> None:
    out = rank_correlation_by_category({"a": [(1, 1), (2, 2), (3, 3)], "b": [(1, 3), (2, 2), (3, 1)], "c": [(1, 1)]})
    assert out["a"].rho == pytest.approx(1.0)
    assert out["b"].rho == pytest.approx(-1.0)
    assert math.isnan(out["c"].rho)
    assert out["c"].n == 1
