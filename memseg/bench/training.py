"""Training: seconds per optimisation step at batch 8 (4 normal + 4 synthetic), images per second,
peak host memory and, on CUDA, peak GPU memory.

The step is :func:`memseg.training.loop.training_step`, the one ``fit`` runs (model, L1 + focal loss,
optimiser and schedule; bf16 autocast and channels-last on CUDA), on pre-drawn batches so data
loading is not in the figure.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from memseg.bench.figures import Better, Clock, Figure, Stats, summarize, time_runs
from memseg.bench.peak_rss import PeakRSS
from memseg.bench.report import BenchReport
from memseg.bench.workload import BenchData, BenchSettings, Section, bench_config, build_model, sync
from memseg.config import MemSegConfig
from memseg.data.datasets import create_train_loader
from memseg.loss import MemSegLoss
from memseg.training.loop import training_step
from memseg.training.schedule import create_optimizer, create_scheduler

STEP = Figure("train.step_s", "s", Better.LOWER, "training step at batch 8 (4 normal + 4 synthetic)")
IMAGES = Figure("train.images_per_s", "images/s", Better.HIGHER, "training images per second")
PEAK_HOST = Figure("train.peak_host_memory_mib", "MiB", Better.LOWER, "peak host RSS while training")
PEAK_GPU = Figure("train.peak_gpu_memory_mib", "MiB", Better.LOWER, "peak GPU memory allocated while training")


@dataclass(frozen=True)
class StepMeasurement:
    """Seconds per step, and the memory the model and the steps took (MiB; GPU: None on the CPU)."""

    step_s: Stats
    peak_host_mib: float
    host_delta_mib: float
    peak_gpu_mib: float | None


def measure_training_step(
    cfg: MemSegConfig,
    data: BenchData,
    *,
    repeats: int,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    clock: Clock = time.perf_counter,
) -> StepMeasurement:
    """Seconds per training step of ``cfg`` on pre-drawn batches (data loading excluded)."""
    device = torch.device(device)
    it = iter(create_train_loader(data.train, cfg.with_overrides({"data.num_workers": 0})))
    batches = [next(it) for _ in range(min(4, warmup + repeats))]
    del it
    if device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as rss:
        durations = _time_steps(cfg, data, batches, device, repeats=repeats, warmup=warmup, clock=clock)
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    gc.collect()  # the model and optimiser of _time_steps, before the next section allocates
    return StepMeasurement(summarize(durations), rss.peak_mib, rss.delta_mib, peak_gpu)


def _time_steps(
    cfg: MemSegConfig,
    data: BenchData,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    clock: Clock,
) -> list[float]:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data, device)
    model.train()
    criterion = MemSegLoss(cfg.loss).to(device)
    optimizer = create_optimizer(model.trainable_parameters(), cfg.optim)
    scheduler = create_scheduler(optimizer, cfg.optim, cfg.train.steps)
    channels_last = device.type == "cuda" and cfg.train.channels_last
    counter = iter(range(10**9))

    def run() -> None:
        images, masks = batches[next(counter) % len(batches)]
        training_step(model, criterion, optimizer, scheduler, images, masks, device, amp=cfg.train.amp,
                      channels_last=channels_last)
        sync(device)

    return time_runs(run, repeats=repeats, warmup=warmup, clock=clock)


def measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    m = measure_training_step(
        bench_config(settings, data.root), data, repeats=settings.runs, warmup=max(1, settings.warmup),
        device=settings.device, clock=settings.timer,
    )
    report.add(STEP, m.step_s)
    report.add(IMAGES, m.step_s.inverted(settings.batch_size))
    report.add(PEAK_HOST, Stats.single(m.peak_host_mib))
    memory = {"peak_host_mib": m.peak_host_mib, "host_delta_mib": m.host_delta_mib}
    if m.peak_gpu_mib is None:
        report.skip(PEAK_GPU, "CPU run (GPU memory is measured with --device cuda)")
    else:
        report.add(PEAK_GPU, Stats.single(m.peak_gpu_mib))
        memory["peak_gpu_mib"] = m.peak_gpu_mib
    report.details["train_memory"] = memory


SECTION = Section("training", (STEP, IMAGES, PEAK_HOST, PEAK_GPU), measure)
