"""Anomaly synthesis per process: synthetic and normal samples per second, Perlin masks per second.

Samples come from :class:`memseg.data.datasets.TrainDataset` on images decoded once from
``source_size`` px files and resized to ``size`` (the cached path). Measured with one torch and one
OpenCV thread, as one DataLoader worker process runs (:func:`memseg.bench.machine.worker_threads`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from memseg.bench.figures import Better, Figure, rate_stats, time_runs
from memseg.bench.machine import worker_threads
from memseg.bench.report import BenchReport
from memseg.bench.workload import BenchData, BenchSettings, Section, bench_config
from memseg.data.datasets import ItemKey, TrainDataset
from memseg.synthesis import perlin_mask

TEXTURE = Figure("synthesis.texture_samples_per_s", "samples/s", Better.HIGHER,
                 "synthetic samples, texture source (one worker process)")
STRUCTURAL = Figure("synthesis.structural_samples_per_s", "samples/s", Better.HIGHER,
                    "synthetic samples, structural source (one worker process)")
ANOMALOUS = Figure("synthesis.anomalous_samples_per_s", "samples/s", Better.HIGHER,
                   "synthetic samples, config's source mix (one worker process)")
NORMAL = Figure("synthesis.normal_samples_per_s", "samples/s", Better.HIGHER, "normal samples (one worker process)")
PERLIN = Figure("synthesis.perlin_masks_per_s", "masks/s", Better.HIGHER, "Perlin masks")

# figure -> (config overrides, synthetic sample?)
_SAMPLE_CASES: dict[Figure, tuple[dict[str, object], bool]] = {
    TEXTURE: ({"synthesis.texture_probability": 1.0}, True),
    STRUCTURAL: ({"synthesis.texture_probability": 0.0}, True),
    ANOMALOUS: ({}, True),
    NORMAL: ({}, False),
}


def measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    with worker_threads():
        _measure(settings, data, report)


def _measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    items = 10 if settings.quick else 40
    n = len(data.train)
    for figure, (overrides, synthetic) in _SAMPLE_CASES.items():
        dataset = TrainDataset(data.train, bench_config(settings, data.root, **overrides))  # decodes once
        counter = iter(range(10**9))

        def run(dataset: TrainDataset = dataset, synthetic: bool = synthetic, counter: Iterator[int] = counter) -> None:
            for _ in range(items):
                dataset[ItemKey(next(counter) % n, synthetic, 0)]

        durations = time_runs(run, repeats=settings.runs, warmup=settings.warmup, clock=settings.timer)
        report.add(figure, rate_stats(durations, items))

    cfg = bench_config(settings, data.root)
    rng = np.random.default_rng(settings.seed)
    masks = items * 2
    shape = (settings.size, settings.size)

    def masks_run() -> None:
        for _ in range(masks):
            perlin_mask(rng, shape, cfg.synthesis)

    durations = time_runs(masks_run, repeats=settings.runs, warmup=settings.warmup, clock=settings.timer)
    report.add(PERLIN, rate_stats(durations, masks))


SECTION = Section("synthesis", (TEXTURE, STRUCTURAL, ANOMALOUS, NORMAL, PERLIN), measure)
