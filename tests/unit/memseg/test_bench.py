"""``memseg.bench``: the statistics helpers (with a fake clock), the report's JSON schema, the table,
and the fork-safety of the training DataLoader that the loader figures depend on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from memseg.bench import (
    FIGURES,
    SCHEMA_VERSION,
    BenchReport,
    BenchSettings,
    PeakRSS,
    Stats,
    format_table,
    latency_stats,
    machine_info,
    percentile,
    rate_stats,
    summarize,
    time_runs,
)


class FakeClock:
    """A clock that advances by the next scripted duration at every call of the timed function."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 100.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.calls += 1
        self.now += self.durations.pop(0)


def test_time_runs_discards_warmup_and_times_each_run() -> None:
    clock = FakeClock([50.0, 40.0, 3.0, 1.0, 2.0])
    durations = time_runs(clock.work, repeats=3, warmup=2, clock=clock)
    assert clock.calls == 5
    assert durations == [3.0, 1.0, 2.0]  # the two slow warm-up runs are not in the figures


def test_time_runs_without_warmup() -> None:
    clock = FakeClock([0.5, 0.25])
    assert time_runs(clock.work, repeats=2, warmup=0, clock=clock) == [0.5, 0.25]


@pytest.mark.parametrize(("repeats", "warmup"), [(0, 1), (3, -1)])
def test_time_runs_rejects_bad_counts(repeats: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="repeats|warmup"):
        time_runs(lambda: None, repeats=repeats, warmup=warmup)


def test_summarize_median_min_max() -> None:
    s = summarize([3.0, 1.0, 2.0, 10.0], "s")
    assert (s.median, s.min, s.max, s.unit, s.runs) == (2.5, 1.0, 10.0, "s", 4)
    assert summarize([7.0], "x").median == 7.0


def test_summarize_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="no values"):
        summarize([], "s")
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")], "s")


def test_rate_stats_from_a_fake_clock() -> None:
    clock = FakeClock([9.0, 0.5, 0.25, 1.0])  # warm-up, then 3 runs of 10 items
    durations = time_runs(clock.work, repeats=3, warmup=1, clock=clock)
    s = rate_stats(durations, 10, "samples/s")
    assert (s.median, s.min, s.max, s.runs) == (20.0, 10.0, 40.0, 3)
    with pytest.raises(ValueError, match="positive"):
        rate_stats([0.0], 1, "x")


def test_percentiles_and_latency() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    lat = latency_stats([0.010, 0.020, 0.030, 0.040, 1.0])
    assert lat["p50"].median == pytest.approx(30.0)
    assert lat["p95"].median == pytest.approx(40.0 + 0.8 * 960.0)
    assert lat["p50"].unit == "ms" and lat["p50"].min == pytest.approx(10.0) and lat["p95"].max == pytest.approx(1000.0)


def test_settings_defaults() -> None:
    s = BenchSettings()
    assert (s.device, s.size, s.source_size, s.weights, s.memory_size, s.batch_size) == ("cpu", 256, 384, "none", 30, 8)
    assert s.runs == 5 and BenchSettings(quick=True).runs == 3 and BenchSettings(repeats=7, quick=True).runs == 7
    assert BenchSettings(workers=3).n_workers == 3 and BenchSettings().n_workers >= 1


def _report() -> BenchReport:
    report = BenchReport(machine=machine_info("cpu"), settings={"device": "cpu", "size": 256, "source_size": 384})
    for name, (unit, _) in FIGURES.items():
        report.add(name, Stats(2.0, 1.0, 3.0, unit, 3))
    report.skip("train.peak_gpu_memory_mib", "CPU run")
    report.add("synthesis.perlin_masks_per_s", Stats(250.0, 200.0, 260.0, "masks/s", 3))
    return report


def test_report_json_schema(tmp_path: Path) -> None:
    path = _report().write_json(tmp_path / "sub" / "bench.json")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert set(doc) == {"schema_version", "machine", "settings", "figures", "derived", "targets", "details"}
    for key in ("cpu_model", "cpu_count", "torch", "device_name", "git_commit", "load_average"):
        assert key in doc["machine"]
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["cpu_model"]
    assert set(doc["figures"]) == set(FIGURES)
    for name, fig in doc["figures"].items():
        if "skipped" in fig:
            assert name == "train.peak_gpu_memory_mib" and fig["skipped"]
            continue
        assert set(fig) == {"median", "min", "max", "unit", "runs"}
        assert fig["min"] <= fig["median"] <= fig["max"]
    perlin = doc["targets"]["synthesis.perlin_masks_per_s"]
    assert perlin == {"op": ">=", "target": 300.0, "measured": 250.0, "met": False}
    assert doc["targets"]["memory.build_s"]["met"] is False  # 2.0 s against "<= 1 s"


def test_targets_compare_in_the_right_direction() -> None:
    report = BenchReport(machine={}, settings={})
    report.add("memory.build_s", Stats(0.5, 0.4, 0.6, "s", 3))
    report.add("train.step_s", Stats(5.0, 4.9, 5.1, "s", 3))
    report.add("infer.batch8_images_per_s", Stats(16.0, 15.0, 17.0, "images/s", 3))
    t = report.targets()
    assert t["memory.build_s"]["met"] is True  # <= 1 s
    assert t["train.step_s"]["met"] is False  # <= 0.8 * 5.9 = 4.72 s
    assert t["train.step_s"]["target"] == pytest.approx(4.72)
    assert t["infer.batch8_images_per_s"]["met"] is True  # >= 15
    assert t["synthesis.perlin_masks_per_s"]["met"] is None  # not measured


def test_table_lists_every_figure_and_skips() -> None:
    text = format_table(_report())
    for name in FIGURES:
        assert name in text
    assert "skipped" in text and "MISSED" in text


def _touch_fresh_pages(mib: int, hold_s: float = 0.0) -> None:
    """Make ``mib`` MiB resident in pages the process never had, for at least ``hold_s`` seconds.

    An anonymous mmap, written page by page. (A numpy array can be carved from heap memory that
    an earlier test freed but the allocator kept resident, and then RSS rightly does not grow.)
    """
    import mmap

    size = mib * 2**20
    with mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(hold_s)


def test_peak_rss_sees_a_large_allocation() -> None:
    with PeakRSS(interval=0.001) as rss:
        _touch_fresh_pages(64)
    assert rss.peak_mib > 64
    assert rss.delta_mib >= 32  # the kernel's high-water mark (Linux) or a sample saw the block


def test_peak_rss_is_reset_on_entry() -> None:
    """A spike before the block must not count: the Linux high-water mark is reset on entry."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    _touch_fresh_pages(256)
    with PeakRSS() as rss:
        _touch_fresh_pages(8)
    assert rss.method == "vmhwm"
    assert rss.delta_mib < 128


def test_train_loader_workers_start_after_opencv_work(tmp_path: Path) -> None:
    """Regression: forked DataLoader workers hung in cv2.setNumThreads after OpenCV ran in the parent."""
    from memseg.data.synthetic_mvtec import generate_dataset

    root = generate_dataset(tmp_path / "data", size=64, categories=["carpet"], n_train=8, n_test_good=1,
                            n_test_defect=1)
    script = textwrap.dedent(
        f"""
        import time
        import cv2, numpy as np
        from memseg.config import MemSegConfig, resolve_for_category
        from memseg.data.datasets import create_train_loader
        from memseg.data.mvtec import list_category

        cfg = resolve_for_category(MemSegConfig().with_overrides({{
            "data.root": {str(root)!r}, "data.category": "carpet", "data.image_size": 64,
            "data.num_workers": 1, "model.memory_size": 2, "train.batch_size": 4}}))
        a = np.random.rand(256, 256).astype(np.float32)
        rot = cv2.getRotationMatrix2D((128, 128), 30, 1.0)
        for _ in range(50):
            cv2.warpAffine(a, rot, (256, 256))  # OpenCV's pool threads now sleep in this process
        time.sleep(0.5)
        it = iter(create_train_loader(list_category({str(root)!r}, "carpet").train, cfg))
        images, masks = next(it)
        print("batch", tuple(images.shape), cv2.getNumThreads() >= 1)
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the DataLoader worker hung at start-up (OpenCV pool inherited through fork)")
    assert out.returncode == 0, out.stderr
    assert "batch (4, 3, 64, 64) True" in out.stdout


def test_peak_rss_falls_back_to_sampling_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc/self/clear_refs is missing (macOS, locked-down containers) a sampler thread measures."""
    import memseg.bench as bench

    monkeypatch.setattr(bench, "_reset_high_water_mark", lambda: False)
    with PeakRSS(interval=0.001) as rss:
        _touch_fresh_pages(64, hold_s=0.1)  # long enough for a loaded machine to run the sampler
    assert rss.method == "sampled"
    assert rss.delta_mib >= 32
