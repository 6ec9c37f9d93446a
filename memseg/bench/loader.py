"""Data loading: samples per second out of the training DataLoader with 0, 1 and N workers, and how
many workers a GPU trial needs to be fed.

The DataLoader figures are always wall time: their workers are other processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from memseg.bench import synthesis
from memseg.bench.figures import Better, Figure, rate_stats, time_runs
from memseg.bench.report import BenchReport
from memseg.bench.workload import BenchData, BenchSettings, Section, bench_config
from memseg.config import SynthesisConfig
from memseg.data.datasets import create_train_loader, synthetic_count

WORKERS_0 = Figure("loader.workers_0.samples_per_s", "samples/s", Better.HIGHER, "DataLoader, 0 workers")
WORKERS_1 = Figure("loader.workers_1.samples_per_s", "samples/s", Better.HIGHER, "DataLoader, 1 worker")
WORKERS_N = Figure("loader.workers_n.samples_per_s", "samples/s", Better.HIGHER, "DataLoader, N workers")
PER_WORKER = Figure("loader.per_worker_samples_per_s", "samples/s", Better.HIGHER, "DataLoader, N workers / N")

# The step time the workers are sized against, and the margin they must deliver above what it
# consumes: the GPU step goal (docs/performance.md, "The DataLoader against the GPU step").
FEED_STEP_S = 0.015
FEED_MARGIN = 2.0


def measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    batches = 3 if settings.quick else 10
    n = settings.n_workers
    pin = settings.device.startswith("cuda")
    for workers, figure in ((0, WORKERS_0), (1, WORKERS_1), (n, WORKERS_N)):
        cfg = bench_config(settings, data.root, **{"data.num_workers": workers})
        loader = create_train_loader(data.train, cfg, pin_memory=pin)
        it = iter(loader)
        try:
            # Warm-up: worker start-up and the prefetch queue filling are not steady-state throughput.
            for _ in range(max(1, workers) * 2):
                next(it)

            def run(it: Iterator[tuple[torch.Tensor, torch.Tensor]] = it) -> None:
                for _ in range(batches):
                    next(it)

            stats = rate_stats(time_runs(run, repeats=settings.runs, warmup=0), batches * settings.batch_size)
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)  # a 0-worker iterator has none
            if shutdown is not None:
                shutdown()
            del it, loader
        report.add(figure, stats)
        if workers == n:
            report.add(PER_WORKER, stats.scaled(1 / max(1, n)))
    per_worker = report.median(PER_WORKER) or 0.0
    consumed = settings.batch_size / FEED_STEP_S
    report.derived["gpu_target_consumes_samples_per_s"] = consumed
    report.derived["gpu_target_needs_samples_per_s"] = FEED_MARGIN * consumed
    if per_worker > 0:
        report.derived["workers_needed_for_gpu_target"] = math.ceil(FEED_MARGIN * consumed / per_worker)


def derive_worker_rate(settings: BenchSettings, report: BenchReport) -> None:
    """What one worker delivers for the training batch mix, from the single-process synthesis figures.

    A batch of B has ``synthetic_count`` synthetic and the rest normal samples, so a worker spends
    ``k / anomalous + (B - k) / normal`` seconds per batch. Unlike the DataLoader figures this does
    not depend on how many cores the main process leaves to the workers.
    """
    anomalous = report.median(synthesis.ANOMALOUS)
    normal = report.median(synthesis.NORMAL)
    if not anomalous or not normal:
        return
    b = settings.batch_size
    k = synthetic_count(b, SynthesisConfig().synthetic_ratio)
    per_worker = b / (k / anomalous + (b - k) / normal)
    report.derived["worker_batch_mix_samples_per_s"] = per_worker
    report.derived["workers_needed_for_gpu_target_from_synthesis"] = math.ceil(FEED_MARGIN * b / FEED_STEP_S
                                                                               / per_worker)


SECTION = Section("loader", (WORKERS_0, WORKERS_1, WORKERS_N, PER_WORKER), measure)

