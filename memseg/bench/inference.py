"""Inference and the memory bank: the memory-bank build time for N samples, images per second at
batch 1 and 8 and the batch-1 latency, as ``memseg predict`` runs the model (memory comparison
included; fp32, and bf16 autocast as ``--precision bf16``).
"""

from __future__ import annotations

import numpy as np
import torch

from memseg.bench.figures import Better, Figure, latency_stats, rate_stats, summarize, time_runs
from memseg.bench.report import BenchReport
from memseg.bench.workload import BenchData, BenchSettings, Section, bench_config, sync
from memseg.data.datasets import load_images, load_memory_images, to_tensor
from memseg.evaluation import inference_autocast
from memseg.model import create_model

MEMORY_BUILD = Figure("memory.build_s", "s", Better.LOWER, "memory-bank build, N samples")
BATCH1 = Figure("infer.batch1_images_per_s", "images/s", Better.HIGHER,
                "inference, batch 1 (memory comparison included)")
LATENCY_P50 = Figure("infer.batch1_latency_p50_ms", "ms", Better.LOWER, "inference latency p50, batch 1")
LATENCY_P95 = Figure("infer.batch1_latency_p95_ms", "ms", Better.LOWER, "inference latency p95, batch 1")
BATCH8 = Figure("infer.batch8_images_per_s", "images/s", Better.HIGHER,
                "inference, batch 8 (memory comparison included)")
BF16_BATCH8 = Figure("infer.bf16_batch8_images_per_s", "images/s", Better.HIGHER,
                     "inference, batch 8, bf16 autocast (memseg predict --precision bf16)")


def measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    device = torch.device(settings.device)
    cfg = bench_config(settings, data.root)
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg).to(device).eval()
    channels_last = device.type == "cuda" and cfg.train.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    memory_images = load_memory_images(data.memory, settings.size)

    def build() -> None:
        model.build_memory(memory_images.to(device))
        sync(device)

    durations = time_runs(build, repeats=settings.runs, warmup=settings.warmup, clock=settings.timer)
    report.add(MEMORY_BUILD, summarize(durations))

    pool = load_images([s.path for s in data.train], settings.size)
    # What `memseg predict` runs: fp32 unless --precision bf16 (the training step's AMP is separate).
    for batch, precision, figure in ((1, "fp32", BATCH1), (settings.batch_size, "fp32", BATCH8),
                                     (settings.batch_size, "bf16", BF16_BATCH8)):
        x = to_tensor(pool[np.arange(batch) % len(pool)]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def run(x: torch.Tensor = x, precision: str = precision) -> None:
            with torch.inference_mode(), inference_autocast(device, precision):
                model.anomaly_map(x)
            sync(device)

        repeats = settings.runs if batch > 1 else (10 if settings.quick else 40)
        durations = time_runs(run, repeats=repeats, warmup=max(1, settings.warmup), clock=settings.timer)
        report.add(figure, rate_stats(durations, batch))
        if batch == 1:
            p50, p95 = latency_stats(durations)
            report.add(LATENCY_P50, p50)
            report.add(LATENCY_P95, p95)


SECTION = Section("inference", (MEMORY_BUILD, BATCH1, LATENCY_P50, LATENCY_P95, BATCH8, BF16_BATCH8), measure)
