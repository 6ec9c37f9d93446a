"""Performance measurement of the MemSeg pipeline on the current machine (``memseg bench``).

Each figure is the median of repeated runs after a warm-up, with min and max. The modules:

- ``figures``: what a figure is (name, unit, which way is better) and the statistics of timed runs;
- ``machine``: CPU, versions, commit, load and thread settings; ``peak_rss``: peak host memory;
- ``workload``: the settings, the generated data and config, and the :class:`Section` type;
- one module per section, each declaring its figures: ``synthesis``, ``loader``, ``training``,
  ``inference`` (which also times the memory-bank build);
- ``run``: runs the sections into a report; ``report``: the JSON and the table; ``compare``: two
  reports figure by figure (``memseg bench --compare``).

Nothing here imports Ray or MLflow: the sweep-overhead section lives in ``sweeps/bench_overhead.py``
and records its figure through the same types.
"""
