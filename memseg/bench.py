"""Performance measurement of the MemSeg pipeline on the current machine (``memseg bench``, issue #6).

What is measured, each figure the median of repeated runs after a warm-up, with min and max:

- anomaly synthesis per process: synthetic training samples per second with the texture source and
  with the structural source (spec 2.2), the mix the config draws, normal samples per second and
  Perlin masks per second (spec 2.1), all through :class:`memseg.data.datasets.TrainDataset` on
  images decoded once from ``source_size`` px files and resized to ``size`` (the cached path);
- data loading: samples per second delivered by the training DataLoader
  (:func:`memseg.data.datasets.create_train_loader`) with 0, 1 and N workers;
- training: seconds per optimisation step at batch 8 (4 normal + 4 synthetic), the same step as
  :func:`memseg.training.fit` (model, loss, optimiser and schedule, AMP and channels-last on CUDA),
  images per second, peak host memory and, on CUDA, peak GPU memory;
- inference: images per second at batch 1 and 8 and the batch-1 latency p50/p95 of the full model
  (memory comparison with N memory samples included), and the memory-bank build time.

Nothing here imports Ray or MLflow: the sweep-overhead figure is measured by
``sweeps.bench_overhead`` and merged by the CLI. The data is a generated MVTec-layout category
(:func:`memseg.data.synthetic_mvtec.generate_dataset`) written to a temporary folder, so the bench
needs no download; ``--weights none`` keeps the backbone offline too.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCHEMA_VERSION = 1

# The training step a GPU must be fed at (issue #6, GPU goal): 8 images in 15 ms.
GPU_TARGET_STEP_S = 0.015
# The DataLoader must deliver this many times what that step consumes.
LOADER_MARGIN = 2.0

Clock = Callable[[], float]


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """One figure: median, min and max over ``runs`` timed runs, in ``unit``."""

    median: float
    min: float
    max: float
    unit: str
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Sequence[float], unit: str) -> Stats:
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
    return Stats(statistics.median(values), min(values), max(values), unit, len(values))


def time_runs(fn: Callable[[], object], *, repeats: int, warmup: int = 1, clock: Clock = time.perf_counter) -> list[float]:
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


def rate_stats(durations: Sequence[float], items: int, unit: str) -> Stats:
    """Throughput of runs that each processed ``items`` things: ``items / duration`` per run."""
    if any(d <= 0 for d in durations):
        msg = f"rate_stats: durations must be positive, got {list(durations)}"
        raise ValueError(msg)
    return summarize([items / d for d in durations], unit)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        msg = "percentile: no values"
        raise ValueError(msg)
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_stats(durations: Sequence[float]) -> dict[str, Stats]:
    """p50 and p95 of per-call latencies, in ms; min/max are the fastest and slowest call."""
    ms = [d * 1000.0 for d in durations]
    lo, hi, n = min(ms), max(ms), len(ms)
    return {
        "p50": Stats(percentile(ms, 50), lo, hi, "ms", n),
        "p95": Stats(percentile(ms, 95), lo, hi, "ms", n),
    }


# --------------------------------------------------------------------------------------------------
# Settings, figures and the report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how.

    Attributes:
        device: ``cpu`` or ``cuda``.
        size: training/inference image size (px).
        source_size: size of the image files the data is decoded from (px), like MVTec's larger PNGs.
        quick: fewer and shorter runs (CI smoke test).
        repeats: timed runs per figure (None: 5, quick: 3).
        warmup: untimed runs before them.
        weights: ``model.backbone_weights`` (``none`` = offline random init, ``imagenet`` or a file).
        category: generated category (its foreground rule and defaults apply).
        memory_size: memory samples N for the memory build and the inference comparison.
        batch_size: training and batched-inference batch.
        workers: N of the "N workers" DataLoader figure (None: the CPUs this process may use).
        threads: torch intra-op threads (None: torch's default).
        seed: seed of the data generator and the synthesis.
        dtd_root: DTD root for texture sources (None: procedural textures).
        clock: ``wall`` (elapsed time, the figures a user sees) or ``cpu`` (this process's CPU time,
            all threads: on a machine shared with other jobs, a 1-thread run timed in CPU time
            approximates the idle machine; the DataLoader figures always use wall time, since their
            workers are other processes).
    """

    device: str = "cpu"
    size: int = 256
    source_size: int = 384
    quick: bool = False
    repeats: int | None = None
    warmup: int = 1
    weights: str = "none"
    category: str = "bottle"
    memory_size: int = 30
    batch_size: int = 8
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    dtd_root: str | None = None
    clock: str = "wall"

    @property
    def timer(self) -> Clock:
        """The clock the figures are timed with (see ``clock``)."""
        return time.process_time if self.clock == "cpu" else time.perf_counter

    @property
    def runs(self) -> int:
        return self.repeats if self.repeats is not None else (3 if self.quick else 5)

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers is not None else available_cpus()


# Every figure the bench produces: name -> (unit, what it is). Figures that do not apply to a run
# (GPU memory on the CPU) are reported as skipped with the reason, never left out.
FIGURES: dict[str, tuple[str, str]] = {
    "synthesis.texture_samples_per_s": ("samples/s", "synthetic samples, texture source (one worker process)"),
    "synthesis.structural_samples_per_s": ("samples/s", "synthetic samples, structural source (one worker process)"),
    "synthesis.anomalous_samples_per_s": ("samples/s", "synthetic samples, config's source mix (one worker process)"),
    "synthesis.normal_samples_per_s": ("samples/s", "normal samples (one worker process)"),
    "synthesis.perlin_masks_per_s": ("masks/s", "Perlin masks"),
    "loader.workers_0.samples_per_s": ("samples/s", "DataLoader, 0 workers"),
    "loader.workers_1.samples_per_s": ("samples/s", "DataLoader, 1 worker"),
    "loader.workers_n.samples_per_s": ("samples/s", "DataLoader, N workers"),
    "loader.per_worker_samples_per_s": ("samples/s", "DataLoader, N workers / N"),
    "train.step_s": ("s", "training step at batch 8 (4 normal + 4 synthetic)"),
    "train.images_per_s": ("images/s", "training images per second"),
    "train.peak_host_memory_mib": ("MiB", "peak host RSS while training"),
    "train.peak_gpu_memory_mib": ("MiB", "peak GPU memory allocated while training"),
    "infer.batch1_images_per_s": ("images/s", "inference, batch 1 (memory comparison included)"),
    "infer.batch8_images_per_s": ("images/s", "inference, batch 8 (memory comparison included)"),
    "infer.bf16_batch8_images_per_s": ("images/s", "inference, batch 8, bf16 autocast (memseg predict --precision bf16)"),
    "infer.batch1_latency_p50_ms": ("ms", "inference latency p50, batch 1"),
    "infer.batch1_latency_p95_ms": ("ms", "inference latency p95, batch 1"),
    "memory.build_s": ("s", "memory-bank build, N samples"),
    "sweep.overhead_share": ("share", "share of a smoke-sweep trial's wall time outside training steps"),
}

# Issue #6 targets on the 2-core development CPU at 256 px: name -> (">=" or "<=", value).
CPU_TARGETS: dict[str, tuple[str, float]] = {
    "synthesis.texture_samples_per_s": (">=", 150.0),
    "synthesis.structural_samples_per_s": (">=", 150.0),
    "synthesis.anomalous_samples_per_s": (">=", 150.0),
    "synthesis.perlin_masks_per_s": (">=", 300.0),
    "infer.batch8_images_per_s": (">=", 15.0),
    "train.step_s": ("<=", 0.8 * 5.9),
    "memory.build_s": ("<=", 1.0),
}
# The public reimplementation on the same kind of machine (issue #6), for the table.
REFERENCE: dict[str, float] = {
    "synthesis.anomalous_samples_per_s": 27.0,
    "synthesis.normal_samples_per_s": 86.0,
    "synthesis.perlin_masks_per_s": 65.0,
    "train.step_s": 5.9,
    "train.images_per_s": 1.35,
    "train.peak_host_memory_mib": 2.8 * 1024,
    "infer.batch1_images_per_s": 4.5,
    "infer.batch8_images_per_s": 4.0,
    "memory.build_s": 1.9,
}


@dataclass
class BenchReport:
    """Everything one ``memseg bench`` run found.

    Attributes:
        machine: CPU model, cores, torch version, device name, git commit, load average...
        settings: the :class:`BenchSettings` as a dict.
        figures: name -> :class:`Stats` dict, or ``{"skipped": reason}``.
        derived: plain numbers computed from the figures (workers a GPU trial needs...).
        details: extra per-section information (e.g. the sweep-overhead breakdown).
    """

    machine: dict[str, Any]
    settings: dict[str, Any]
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, stats: Stats) -> None:
        self.figures[name] = stats.to_dict()

    def skip(self, name: str, reason: str) -> None:
        self.figures[name] = {"skipped": reason}

    def median(self, name: str) -> float | None:
        value = self.figures.get(name, {}).get("median")
        return float(value) if value is not None else None

    def targets(self) -> dict[str, dict[str, Any]]:
        """The issue's CPU targets with the measured medians (meaningful for a 256 px CPU run)."""
        out = {}
        for name, (op, value) in CPU_TARGETS.items():
            got = self.median(name)
            met = None if got is None else (got >= value if op == ">=" else got <= value)
            out[name] = {"op": op, "target": value, "measured": got, "met": met}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "machine": self.machine,
            "settings": self.settings,
            "figures": self.figures,
            "derived": self.derived,
            "targets": self.targets(),
            "details": self.details,
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path


def fmt(value: float | None) -> str:
    """A figure with 3 significant digits (none: "-")."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    """Text table lines: the first row is the header (underlined), first column left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = (c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_table(report: BenchReport) -> str:
    """A readable table: figure, median, min, max, unit, reference and target."""
    settings = report.settings
    m = report.machine
    head = (
        f"memseg bench: {settings['device']} ({m.get('device_name')}), {settings['size']} px from "
        f"{settings['source_size']} px sources, {m.get('cpu_count')} CPUs, torch {m.get('torch')} "
        f"({settings.get('torch_threads')} threads), commit {str(m.get('git_commit'))[:10]}"
    )
    targets = report.targets()
    rows = [("figure", "median", "min", "max", "unit", "ref.", "target")]
    for name in [*FIGURES, *(n for n in report.figures if n not in FIGURES)]:
        fig = report.figures.get(name)
        if fig is None:
            continue
        if "skipped" in fig:
            rows.append((name, "skipped", "", "", "", "", str(fig["skipped"])[:60]))
            continue
        t = targets.get(name)
        target = f"{t['op']} {fmt(t['target'])} {'ok' if t['met'] else 'MISSED'}" if t else ""
        rows.append(
            (name, fmt(fig["median"]), fmt(fig["min"]), fmt(fig["max"]), fig["unit"],
             fmt(REFERENCE.get(name)), target)
        )
    lines = [head, "", *render_rows(rows)]
    if report.derived:
        lines.append("")
        lines.extend(f"{k}: {fmt(v) if isinstance(v, float) else v}" for k, v in report.derived.items())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, i.e. a container's or a Ray trial's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo, else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout holding this package (``+dirty`` when it has local changes), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "MEMSEG_NUM_THREADS",
               "OPENCV_FOR_THREADS_NUM", "CUDA_VISIBLE_DEVICES")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a figure depends on besides the code: CPU, cores, library versions, device, commit, load."""
    import cv2

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "git_commit": git_commit(),
        "device": device,
        "device_name": cpu_model(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # Thread settings change the figures a lot on a shared machine (docs/performance.md).
        "env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["gpu_memory_mib"] = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**20
    return info


# --------------------------------------------------------------------------------------------------
# Host memory
# --------------------------------------------------------------------------------------------------


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _rss_bytes() -> int | None:
    """Current RSS: psutil where installed (any OS), else Linux's /proc; None where neither exists."""
    try:
        import psutil
    except ImportError:
        return _proc_status_bytes("VmRSS")
    return int(psutil.Process().memory_info().rss)


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where Linux does not allow it."""
    if _proc_status_bytes("VmHWM") is None:
        return False
    try:
        _PROC_CLEAR_REFS.write_text("5")  # "5": reset the peak RSS only (Linux >= 4.0)
    except OSError:
        return False
    return True


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs.

    On Linux the kernel's own high-water mark is reset on entry and read on exit (``method`` =
    ``vmhwm``): exact, whatever the scheduler does. Elsewhere, with psutil (installed with Ray), a
    background thread samples the RSS every ``interval`` seconds, which can miss a short spike while
    the machine is loaded or C code holds the GIL; without psutil, the process's ``ru_maxrss`` at the
    end is used, the peak since the process started and therefore an upper bound. (tracemalloc does
    not see torch's allocations.)
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self.start = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes() or 0
            self.peak = max(self.peak, rss)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if _reset_high_water_mark():
            self.method = "vmhwm"
            self.start = _proc_status_bytes("VmRSS") or 0
            self.peak = self.start
        elif _rss_bytes() is not None:
            self.method = "sampled"
            self.start = _rss_bytes() or 0
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        else:
            self.method = "ru_maxrss"
            self.start = _maxrss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "vmhwm":
            self.peak = max(self.peak, _proc_status_bytes("VmHWM") or 0)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() or 0)
        else:
            self.peak = _maxrss_bytes()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mib(self) -> float:
        return max(0, self.peak - self.start) / 2**20


# --------------------------------------------------------------------------------------------------
# The bench data and model
# --------------------------------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: leave as is), restoring the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def worker_threads() -> Iterator[None]:
    """One torch and one OpenCV thread, as a DataLoader worker runs (``seeding.worker_init_fn``).

    "Per process" synthesis figures are what one worker delivers; intra-op threads would also make
    them collapse on a loaded machine (every parallel region waits for a descheduled thread).
    """
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with torch_threads(1):
            yield
    finally:
        cv2.setNumThreads(before)


def bench_config(settings: BenchSettings, data_root: str | Path, **overrides: Any) -> Any:
    """The resolved training config the bench uses: the authors' defaults at ``size`` on the bench data."""
    from memseg.config import MemSegConfig, resolve_for_category

    changes: dict[str, Any] = {
        "data.root": str(data_root),
        "data.category": settings.category,
        "data.image_size": settings.size,
        "data.dtd_root": settings.dtd_root,
        "data.num_workers": 0,
        "model.backbone_weights": settings.weights,
        "model.memory_size": settings.memory_size,
        "train.batch_size": settings.batch_size,
        "train.seed": settings.seed,
        "train.device": settings.device,
    }
    changes.update(overrides)
    return resolve_for_category(MemSegConfig().with_overrides(changes))


@dataclass
class BenchData:
    """A generated category at ``source_size`` px: the memory images and the training images."""

    root: Path
    memory: list[Any]
    train: list[Any]


def make_bench_data(settings: BenchSettings, out: str | Path) -> BenchData:
    """Write a small MVTec-layout category at ``source_size`` px and split off the N memory images."""
    from memseg.data.mvtec import list_category
    from memseg.data.synthetic_mvtec import generate_dataset

    n_train = settings.memory_size + (8 if settings.quick else 24)
    root = generate_dataset(
        out, size=settings.source_size, categories=[settings.category], n_train=n_train, n_test_good=1,
        n_test_defect=1, seed=settings.seed,
    )
    files = list_category(root, settings.category)
    good = sorted((s for s in files.train if s.label == 0), key=lambda s: s.path.name)
    return BenchData(root, good[: settings.memory_size], good[settings.memory_size :])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(cfg: Any, data: BenchData, device: torch.device) -> Any:
    """MemSeg with its memory built from the N memory images, on ``device``."""
    from memseg.data.datasets import load_memory_images
    from memseg.model import create_model

    model = create_model(cfg).to(device)
    model.build_memory(load_memory_images(data.memory, cfg.data.image_size).to(device))
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def bench_synthesis(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    """Synthetic (texture, structural, mixed) and normal samples per second, Perlin masks per second.

    Measured single-threaded, as one DataLoader worker process runs (:func:`worker_threads`).
    """
    with worker_threads():
        _bench_synthesis(settings, data, report)


def _bench_synthesis(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    from memseg.data.datasets import ItemKey, TrainDataset
    from memseg.synthesis import perlin_mask

    items = 10 if settings.quick else 40
    n = len(data.train)
    cases = {
        "synthesis.texture_samples_per_s": ({"synthesis.texture_probability": 1.0}, True),
        "synthesis.structural_samples_per_s": ({"synthesis.texture_probability": 0.0}, True),
        "synthesis.anomalous_samples_per_s": ({}, True),
        "synthesis.normal_samples_per_s": ({}, False),
    }
    for name, (overrides, synthetic) in cases.items():
        cfg = bench_config(settings, data.root, **overrides)
        dataset = TrainDataset(data.train, cfg)  # decodes and resizes once (the image cache)
        counter = iter(range(10**9))

        def run(dataset: TrainDataset = dataset, synthetic: bool = synthetic, counter: Iterator[int] = counter) -> None:
            for _ in range(items):
                dataset[ItemKey(next(counter) % n, synthetic, 0)]

        report.add(name, rate_stats(time_runs(run, repeats=settings.runs, warmup=settings.warmup, clock=settings.timer), items, "samples/s"))

    cfg = bench_config(settings, data.root)
    rng = np.random.default_rng(settings.seed)
    masks = items * 2
    shape = (settings.size, settings.size)

    def masks_run() -> None:
        for _ in range(masks):
            perlin_mask(rng, shape, cfg.synthesis)

    report.add(
        "synthesis.perlin_masks_per_s",
        rate_stats(time_runs(masks_run, repeats=settings.runs, warmup=settings.warmup, clock=settings.timer), masks, "masks/s"),
    )


def bench_loader(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    """Samples per second out of the training DataLoader with 0, 1 and N workers."""
    from memseg.data.datasets import create_train_loader

    batches = 3 if settings.quick else 10
    per_batch = settings.batch_size
    n = settings.n_workers
    pin = settings.device.startswith("cuda")
    for workers, name in ((0, "loader.workers_0.samples_per_s"), (1, "loader.workers_1.samples_per_s"),
                          (n, "loader.workers_n.samples_per_s")):
        cfg = bench_config(settings, data.root, **{"data.num_workers": workers})
        loader = create_train_loader(data.train, cfg, pin_memory=pin)
        it = iter(loader)
        try:
            # Warm-up: worker start-up and the prefetch queue filling are not steady-state throughput.
            for _ in range(max(1, workers) * 2):
                next(it)

            def run(it: Iterator[Any] = it) -> None:
                for _ in range(batches):
                    next(it)

            stats = rate_stats(time_runs(run, repeats=settings.runs, warmup=0), batches * per_batch, "samples/s")
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it, loader
        report.add(name, stats)
        if workers == n:
            report.add(
                "loader.per_worker_samples_per_s",
                Stats(stats.median / max(1, n), stats.min / max(1, n), stats.max / max(1, n), "samples/s", stats.runs),
            )
    per_worker = report.median("loader.per_worker_samples_per_s") or 0.0
    consumed = settings.batch_size / GPU_TARGET_STEP_S
    report.derived["gpu_target_consumes_samples_per_s"] = consumed
    report.derived["gpu_target_needs_samples_per_s"] = LOADER_MARGIN * consumed
    if per_worker > 0:
        report.derived["workers_needed_for_gpu_target"] = math.ceil(LOADER_MARGIN * consumed / per_worker)


def measure_training_step(
    cfg: Any,
    data: BenchData,
    *,
    repeats: int,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    clock: Clock = time.perf_counter,
) -> tuple[Stats, dict[str, float]]:
    """Seconds per training step of ``cfg`` on pre-drawn batches (data loading excluded).

    Returns:
        ``(step seconds, memory)`` with memory ``peak_host_mib``, ``host_delta_mib`` and, on CUDA,
        ``peak_gpu_mib``.
    """
    from memseg.data.datasets import create_train_loader
    from memseg.loss import MemSegLoss
    from memseg.training.loop import training_step
    from memseg.training.schedule import create_optimizer, create_scheduler

    device = torch.device(device)
    it = iter(create_train_loader(data.train, cfg.with_overrides({"data.num_workers": 0})))
    batches = [next(it) for _ in range(min(4, warmup + repeats))]
    del it
    if device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
        torch.cuda.reset_peak_memory_stats(device)
    memory: dict[str, float] = {}
    with PeakRSS() as rss:
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
            _sync(device)

        durations = time_runs(run, repeats=repeats, warmup=warmup, clock=clock)
    memory["peak_host_mib"] = rss.peak_mib
    memory["host_delta_mib"] = rss.delta_mib
    if device.type == "cuda":
        memory["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    del model, optimizer, scheduler, criterion
    gc.collect()
    return summarize(durations, "s"), memory


def bench_training(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    """Seconds per step at batch 8, images per second, peak host (and GPU) memory."""
    cfg = bench_config(settings, data.root)
    steps, memory = measure_training_step(
        cfg, data, repeats=settings.runs, warmup=max(1, settings.warmup), device=settings.device,
        clock=settings.timer,
    )
    report.add("train.step_s", steps)
    b = settings.batch_size
    report.add("train.images_per_s", Stats(b / steps.median, b / steps.max, b / steps.min, "images/s", steps.runs))
    peak = memory["peak_host_mib"]
    report.add("train.peak_host_memory_mib", Stats(peak, peak, peak, "MiB", 1))
    report.details["train_memory"] = memory
    if "peak_gpu_mib" in memory:
        g = memory["peak_gpu_mib"]
        report.add("train.peak_gpu_memory_mib", Stats(g, g, g, "MiB", 1))
    else:
        report.skip("train.peak_gpu_memory_mib", "CPU run (GPU memory is measured with --device cuda)")


def bench_inference(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    """Memory build time for N samples; images/s at batch 1 and 8 and batch-1 latency, memory comparison included."""
    from memseg.data.datasets import load_memory_images, to_tensor
    from memseg.evaluation import inference_autocast
    from memseg.model import create_model

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
        _sync(device)

    report.add("memory.build_s", summarize(time_runs(build, repeats=settings.runs, warmup=settings.warmup, clock=settings.timer), "s"))

    from memseg.data.datasets import load_images

    pool = load_images([s.path for s in data.train], settings.size)
    # What `memseg predict` runs: fp32 unless --precision bf16 (the training step's AMP is separate).
    cases = (
        (1, "fp32", "infer.batch1_images_per_s"),
        (settings.batch_size, "fp32", "infer.batch8_images_per_s"),
        (settings.batch_size, "bf16", "infer.bf16_batch8_images_per_s"),
    )
    for batch, precision, name in cases:
        x = to_tensor(pool[np.arange(batch) % len(pool)]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def run(x: torch.Tensor = x, precision: str = precision) -> None:
            with torch.inference_mode(), inference_autocast(device, precision):
                model.anomaly_map(x)
            _sync(device)

        repeats = settings.runs if batch > 1 else (10 if settings.quick else 40)
        durations = time_runs(run, repeats=repeats, warmup=max(1, settings.warmup), clock=settings.timer)
        report.add(name, rate_stats(durations, batch, "images/s"))
        if batch == 1:
            lat = latency_stats(durations)
            report.add("infer.batch1_latency_p50_ms", lat["p50"])
            report.add("infer.batch1_latency_p95_ms", lat["p95"])


SECTIONS: dict[str, Callable[[BenchSettings, BenchData, BenchReport], None]] = {
    "synthesis": bench_synthesis,
    "loader": bench_loader,
    "training": bench_training,
    "inference": bench_inference,
}


def run_bench(
    settings: BenchSettings,
    *,
    sections: Sequence[str] = tuple(SECTIONS),
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the requested sections and return the report (the sweep overhead is added by the CLI).

    Args:
        settings: what to measure.
        sections: any of ``synthesis``, ``loader``, ``training``, ``inference``.
        workdir: where the generated data goes (default: a temporary folder, removed afterwards).
        log: called with a line before each section (progress).

    Raises:
        ConfigError: for an unknown section, a CUDA device on a machine without one, or a bad setting.
    """
    from memseg.errors import ConfigError

    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        msg = f"bench sections: unknown {unknown} (known: {', '.join(SECTIONS)})"
        raise ConfigError(msg)
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"--device {settings.device}: CUDA is not available on this machine"
        raise ConfigError(msg)
    if settings.device != "cpu" and not settings.device.startswith("cuda"):
        msg = f"--device: expected cpu or cuda, got {settings.device!r}"
        raise ConfigError(msg)
    if settings.clock not in ("wall", "cpu"):
        msg = f"--clock: expected wall or cpu, got {settings.clock!r}"
        raise ConfigError(msg)
    if settings.size % 32:
        msg = f"--size: must be divisible by 32, got {settings.size}"
        raise ConfigError(msg)
    log = log or (lambda _line: None)
    with torch_threads(settings.threads):
        report = BenchReport(
            machine=machine_info(settings.device),
            settings={**asdict(settings), "runs": settings.runs, "n_workers": settings.n_workers,
                      "torch_threads": torch.get_num_threads()},
        )
        with tempfile.TemporaryDirectory(prefix="memseg-bench-") as tmp:
            out = Path(workdir) if workdir is not None else Path(tmp)
            log(f"generating {settings.memory_size} memory + training images at {settings.source_size} px")
            data = make_bench_data(settings, out / "data")
            for name in sections:
                log(f"measuring {name}")
                started = time.perf_counter()
                SECTIONS[name](settings, data, report)
                report.details.setdefault("section_wall_s", {})[name] = time.perf_counter() - started
        _derive_worker_rate(settings, report)
        report.machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def _derive_worker_rate(settings: BenchSettings, report: BenchReport) -> None:
    """What one worker delivers for the training batch mix, from the single-process synthesis figures.

    A batch of B has ``synthetic_count`` synthetic and the rest normal samples, so a worker spends
    ``k / anomalous + (B - k) / normal`` seconds per batch. Unlike the DataLoader figures this does
    not depend on how many cores the main process leaves to the workers.
    """
    from memseg.config import SynthesisConfig
    from memseg.data.datasets import synthetic_count

    anomalous = report.median("synthesis.anomalous_samples_per_s")
    normal = report.median("synthesis.normal_samples_per_s")
    if not anomalous or not normal:
        return
    b = settings.batch_size
    k = synthetic_count(b, SynthesisConfig().synthetic_ratio)
    per_worker = b / (k / anomalous + (b - k) / normal)
    needed = LOADER_MARGIN * b / GPU_TARGET_STEP_S
    report.derived["worker_batch_mix_samples_per_s"] = per_worker
    report.derived["workers_needed_for_gpu_target_from_synthesis"] = math.ceil(needed / per_worker)


def merge_figures(report: BenchReport, figures: Mapping[str, dict[str, Any]]) -> None:
    """Add figures measured elsewhere (the sweep overhead) to the report."""
    report.figures.update(figures)
