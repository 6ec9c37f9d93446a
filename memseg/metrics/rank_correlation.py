"""How well validation predicts test across a sweep's trials: Spearman rank correlation.

A sweep chooses the trial with the best validation figure; that choice is only as good as the
agreement between the validation and test orderings of the trials. :func:`val_test_rank_correlation`
turns one category's trials into that figure (rho and the number of trials it rests on), for the
sweep report and the category's parent run (see docs/model.md, "Validation and selection").

Ties get average ranks (Spearman's rho is then the Pearson correlation of the ranks, what
``scipy.stats.spearmanr`` computes). Where rho is undefined (fewer than :data:`MIN_TRIALS` trials
with both figures, or one side constant) the result is NaN with the reason, never an exception,
because a sweep with one finished trial must still report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# With two points every monotone pair gives rho = +-1, which says nothing about prediction.
MIN_TRIALS = 3


@dataclass(frozen=True)
class RankCorrelation:
    """A Spearman rank correlation and what it rests on.

    Attributes:
        rho: in [-1, 1], or NaN when undefined (see ``reason``).
        n: pairs used (both values finite).
        reason: why ``rho`` is NaN; empty when it is defined.
    """

    rho: float
    n: int
    reason: str = ""

    @property
    def defined(self) -> bool:
        return not math.isnan(self.rho)


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks (float64 ``(n,)``)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        msg = f"average_ranks: expected a 1-D sequence, got shape {x.shape}"
        raise ValueError(msg)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values in the sorted order; a run of length k starting at position
    # s (0-based) holds ranks s+1 .. s+k, whose mean is s + (k + 1) / 2.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    lengths = np.diff(np.r_[starts, len(x)])
    mean_rank = starts + (lengths + 1) / 2.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> RankCorrelation:
    """Spearman's rho of paired values; pairs with a NaN or infinite value are left out.

    Raises:
        ValueError: ``x`` and ``y`` differ in length or are not 1-D.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        msg = f"spearman: x and y must be 1-D of the same length, got shapes {a.shape} and {b.shape}"
        raise ValueError(msg)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n < MIN_TRIALS:
        dropped = f" ({int((~keep).sum())} left out for a missing or non-finite value)" if (~keep).any() else ""
        return RankCorrelation(math.nan, n, f"fewer than {MIN_TRIALS} pairs: {n}{dropped}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    sa, sb = float(np.sqrt(ra @ ra)), float(np.sqrt(rb @ rb))
    if sa == 0.0 or sb == 0.0:
        which = "both sides are" if sa == sb else ("the first side is" if sa == 0.0 else "the second side is")
        return RankCorrelation(math.nan, n, f"{which} constant over the {n} pairs")
    rho = float(ra @ rb) / (sa * sb)
    return RankCorrelation(min(1.0, max(-1.0, rho)), n)


def val_test_rank_correlation(pairs: Iterable[tuple[float, float]]) -> RankCorrelation:
    """One category's figure: the rank correlation of its trials' (validation, test) values.

    Args:
        pairs: one ``(validation value, test value)`` per trial, of the same metric family (e.g. the
            best-checkpoint ``val_pixel_auroc`` and that checkpoint's ``test_pixel_auroc``). A trial
            missing either figure (NaN, say a failed trial) is left out and not counted in ``n``.
    """
    pairs = list(pairs)
    if not pairs:
        return RankCorrelation(math.nan, 0, f"fewer than {MIN_TRIALS} pairs: 0")
    val, test = zip(*pairs, strict=True)
    return spearman(np.asarray(val, np.float64), np.asarray(test, np.float64))


def rank_correlation_by_category(
    trials: Mapping[str, Iterable[tuple[float, float]]],
) -> dict[str, RankCorrelation]:
    """:func:`val_test_rank_correlation` of every category (category -> its trials' pairs)."""
    return {category: val_test_rank_correlation(pairs) for category, pairs in trials.items()}
