"""What a figure is (name, unit, which way is better) and the statistics of timed runs.

Every section of the bench declares its figures as :class:`Figure` values; the report, the table and
``--compare`` read the unit and the direction from there, so no other code guesses them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

Clock = Callable[[], float]


class Better(StrEnum):
    """Which way a figure improves."""

    HIGHER = "higher"
    LOWER = "lower"


@dataclass(frozen=True)
class Figure:
    """One figure a section measures.

    Attributes:
        name: dotted name, the key in the JSON report (``train.step_s``); never renamed, so old
            reports stay comparable.
        unit: what the median, min and max are in (``s``, ``samples/s``, ``MiB``...).
        better: whether a higher or a lower value is an improvement.
        what: one line for the reader.
    """

    name: str
    unit: str
    better: Better
    what: str


@dataclass(frozen=True)
class Stats:
    """Median, min and max over ``runs`` timed runs (one run: all three equal)."""

    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def single(cls, value: float) -> Stats:
        """A figure measured once (a peak, not a distribution)."""
        return cls(value, value, value, 1)

    def scaled(self, factor: float) -> Stats:
        """Every value times ``factor`` (> 0)."""
        return Stats(self.median * factor, self.min * factor, self.max * factor, self.runs)

    def inverted(self, numerator: float) -> Stats:
        """``numerator / value`` (seconds per step -> images per second): min and max swap."""
        return Stats(numerator / self.median, numerator / self.max, numerator / self.min, self.runs)


def summarize(values: Sequence[float]) -> Stats:
    """Median, min and max of the values of the timed runs.

    Raises:
        ValueError: for an empty sequence or a non-finite value.
    """
    values = [float(v) for v in values]
    if not values:
        msg = "summarize: no values"
        raise ValueError(msg)
    if not all(math.isfinite(v) for v in values):
        msg = f"summarize: non-finite value in {values}"
        raise ValueError(msg)
    return Stats(statistics.median(values), min(values), max(values), len(values))


def time_runs(
    fn: Callable[[], object], *, repeats: int, warmup: int = 1, clock: Clock = time.perf_counter
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, returning each timed call's seconds.

    Args:
        fn: one run of the work to time (it must block until the work is done, e.g. synchronise CUDA).
        repeats: timed runs (>= 1).
        warmup: untimed runs first (caches, allocator, lazy initialisation, JIT).
        clock: monotonic seconds (injectable for tests).
    """
    if repeats < 1:
        msg = f"time_runs: repeats must be >= 1, got {repeats}"
        raise ValueError(msg)
    if warmup < 0:
        msg = f"time_runs: warmup must be >= 0, got {warmup}"
        raise ValueError(msg)
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(repeats):
        start = clock()
        fn()
        durations.append(clock() - start)
    return durations


def rate_stats(durations: Sequence[float], items: int) -> Stats:
    """Throughput of runs that each processed ``items`` things: ``items / duration`` per run."""
    if any(d <= 0 for d in durations):
        msg = f"rate_stats: durations must be positive, got {list(durations)}"
        raise ValueError(msg)
    return summarize([items / d for d in durations])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        msg = "percentile: no values"
        raise ValueError(msg)
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_stats(durations: Sequence[float]) -> tuple[Stats, Stats]:
    """p50 and p95 of per-call latencies in ms; min/max of both are the fastest and slowest call."""
    ms = [d * 1000.0 for d in durations]
    lo, hi, n = min(ms), max(ms), len(ms)
    return Stats(percentile(ms, 50), lo, hi, n), Stats(percentile(ms, 95), lo, hi, n)
