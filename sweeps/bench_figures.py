"""The figure the sweep-overhead section of ``memseg bench`` adds to the report.

Declared apart from :mod:`sweeps.bench_overhead` (which needs Ray) so that ``memseg bench
--skip-sweep`` and ``--compare`` run where Ray is not installed, e.g. a bare GPU node.
"""

from __future__ import annotations

from memseg.bench.figures import Better, Figure

OVERHEAD = Figure("sweep.overhead_share", "share", Better.LOWER,
                  "share of a smoke-sweep trial's wall time outside training steps")
FIGURES = (OVERHEAD,)
