"""``memseg.bench``: the statistics helpers (with a fake clock), the figures the sections declare,
the report's JSON and table, peak host memory, and the fork-safety of the training DataLoader that
the loader figures depend on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from memseg.bench import loader, peak_rss, run, synthesis
from memseg.bench.figures import Better, Figure, Stats, latency_stats, percentile, rate_stats, summarize, time_runs
from memseg.bench.machine import machine_info
from memseg.bench.peak_rss import PeakRSS
from memseg.bench.report import SCHEMA_VERSION, BenchReport, format_table
from memseg.bench.workload import BenchData, BenchSettings, Section, bench_config

# The names reports have carried since the bench was written: renaming one would make old reports
# incomparable, so the declarations must keep them.
REPORTED_NAMES = {
    "synthesis.texture_samples_per_s", "synthesis.structural_samples_per_s", "synthesis.anomalous_samples_per_s",
    "synthesis.normal_samples_per_s", "synthesis.perlin_masks_per_s", "loader.workers_0.samples_per_s",
    "loader.workers_1.samples_per_s", "loader.workers_n.samples_per_s", "loader.per_worker_samples_per_s",
    "train.step_s", "train.images_per_s", "train.peak_host_memory_mib", "train.peak_gpu_memory_mib",
    "infer.batch1_images_per_s", "infer.batch8_images_per_s", "infer.bf16_batch8_images_per_s",
    "infer.batch1_latency_p50_ms", "infer.batch1_latency_p95_ms", "memory.build_s",
    *(f"deploy.{runtime}_{precision}_batch{batch}_images_per_s"
      for runtime in ("onnxruntime", "openvino") for precision in ("fp32", "int8") for batch in (1, 8)),
}


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
    assert summarize([3.0, 1.0, 2.0, 10.0]) == Stats(2.5, 1.0, 10.0, 4)
    assert summarize([7.0]).median == 7.0


def test_summarize_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="no values"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])


def test_rate_stats_from_a_fake_clock() -> None:
    clock = FakeClock([9.0, 0.5, 0.25, 1.0])  # warm-up, then 3 runs of 10 items
    durations = time_runs(clock.work, repeats=3, warmup=1, clock=clock)
    assert rate_stats(durations, 10) == Stats(20.0, 10.0, 40.0, 3)
    with pytest.raises(ValueError, match="positive"):
        rate_stats([0.0], 1)


def test_derived_stats() -> None:
    steps = Stats(2.0, 1.0, 4.0, 5)
    assert steps.inverted(8) == Stats(4.0, 2.0, 8.0, 5)  # the slowest step is the lowest rate
    assert steps.scaled(0.5) == Stats(1.0, 0.5, 2.0, 5)
    assert Stats.single(3.0) == Stats(3.0, 3.0, 3.0, 1)


def test_percentiles_and_latency() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    p50, p95 = latency_stats([0.010, 0.020, 0.030, 0.040, 1.0])
    assert p50.median == pytest.approx(30.0)
    assert p95.median == pytest.approx(40.0 + 0.8 * 960.0)
    assert p50.min == pytest.approx(10.0) and p95.max == pytest.approx(1000.0) and p50.runs == 5


def test_settings_defaults() -> None:
    s = BenchSettings()
    assert (s.device, s.size, s.source_size, s.weights, s.memory_size, s.batch_size) == ("cpu", 256, 384, "none", 30, 8)
    assert s.runs == 5 and BenchSettings(quick=True).runs == 3 and BenchSettings(repeats=7, quick=True).runs == 7
    assert BenchSettings(workers=3).n_workers == 3 and BenchSettings().n_workers >= 1


def test_set_overrides_reach_the_config_and_the_bench_settings_win(tmp_path: Path) -> None:
    settings = BenchSettings(size=64, overrides=("model.memory_match=nearest", "data.image_size=128"))
    cfg = bench_config(settings, tmp_path)
    assert cfg.model.memory_match == "nearest"
    assert cfg.data.image_size == 64  # --size names the image size; a --set cannot contradict it
    assert bench_config(BenchSettings(), tmp_path).model.memory_match == "aligned"


def test_deployment_skips_its_figures_naming_why_when_the_config_cannot_be_exported(tmp_path: Path) -> None:
    from memseg.bench import deployment

    settings = BenchSettings(overrides=("model.memory_match=nearest",))
    report = BenchReport(machine={}, settings={})
    deployment.measure(settings, BenchData(tmp_path, [], []), report)  # refused before any data is read
    assert set(report.figures) == {f.name for f in deployment.FIGURES}
    assert all("neither model.memory_coreset nor model.memory_window set cannot be exported" in str(v["skipped"]) for v in report.figures.values())


def test_sections_declare_the_reported_figures_once_with_a_direction() -> None:
    figures = run.declared_figures()
    names = [f.name for f in figures]
    assert len(names) == len(set(names))
    assert set(names) == REPORTED_NAMES
    for f in figures:
        lower = f.unit in {"s", "ms", "MiB"}
        assert f.better is (Better.LOWER if lower else Better.HIGHER), f
        assert f.unit.endswith("/s") or lower, f
    assert list(run.SECTIONS) == ["synthesis", "loader", "training", "inference", "deployment"]


def _report() -> BenchReport:
    report = BenchReport(machine=machine_info("cpu"), settings={"device": "cpu", "size": 256, "source_size": 384})
    for figure in run.declared_figures():
        report.add(figure, Stats(2.0, 1.0, 3.0, 3))
    report.skip(next(f for f in run.declared_figures() if f.name == "train.peak_gpu_memory_mib"), "CPU run")
    report.derived["workers_needed_for_gpu_target"] = 3
    return report


def test_report_json_layout(tmp_path: Path) -> None:
    path = _report().write_json(tmp_path / "sub" / "bench.json")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert set(doc) == {"schema_version", "machine", "settings", "figures", "derived", "details"}
    for key in ("cpu_model", "cpu_count", "torch", "device_name", "git_commit", "load_average"):
        assert key in doc["machine"]
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["cpu_model"]
    assert list(doc["figures"]) == [f.name for f in run.declared_figures()]
    units = {f.name: f.unit for f in run.declared_figures()}
    for name, fig in doc["figures"].items():
        if "skipped" in fig:
            assert name == "train.peak_gpu_memory_mib" and fig == {"skipped": "CPU run"}
            continue
        assert fig == {"median": 2.0, "min": 1.0, "max": 3.0, "unit": units[name], "runs": 3}
    assert doc["derived"] == {"workers_needed_for_gpu_target": 3}


def test_table_lists_every_figure_its_direction_and_skips() -> None:
    text = format_table(_report())
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    for figure in run.declared_figures():
        assert figure.name in lines
    assert lines["train.step_s"].split()[-2:] == ["s", "lower"]
    assert lines["infer.batch8_images_per_s"].split()[-2:] == ["images/s", "higher"]
    assert "skipped" in lines["train.peak_gpu_memory_mib"] and "CPU run" in lines["train.peak_gpu_memory_mib"]
    assert "workers_needed_for_gpu_target: 3" in text


def test_worker_rate_from_the_synthesis_figures() -> None:
    report = BenchReport(machine={}, settings={})
    report.add(synthesis.ANOMALOUS, Stats.single(100.0))
    report.add(synthesis.NORMAL, Stats.single(400.0))
    loader.derive_worker_rate(BenchSettings(), report)
    # 4 synthetic + 4 normal per batch of 8: 4/100 + 4/400 = 0.05 s per batch -> 160 samples/s, and
    # 2 x 8 / 0.015 s = 1067 samples/s needs 7 such workers.
    assert report.derived["worker_batch_mix_samples_per_s"] == pytest.approx(160.0)
    assert report.derived["workers_needed_for_gpu_target_from_synthesis"] == 7
    bare = BenchReport(machine={}, settings={})
    loader.derive_worker_rate(BenchSettings(), bare)
    assert bare.derived == {}


_TICK = Figure("test.ticks_per_s", "ticks/s", Better.HIGHER, "a fake figure")
_TOCK = Figure("test.tock_s", "s", Better.LOWER, "another")


def _fake_section(record: tuple[Figure, ...]) -> Section:
    def measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
        assert len(data.memory) == settings.memory_size and data.train
        for figure in record:
            report.add(figure, Stats.single(1.0))

    return Section("fake", (_TICK, _TOCK), measure)


_TINY = BenchSettings(size=64, source_size=64, quick=True, memory_size=2)


def test_run_bench_records_the_sections_figures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run, "SECTIONS", {"fake": _fake_section((_TICK, _TOCK))})
    report = run.run_bench(_TINY, sections=["fake"], workdir=tmp_path)
    assert list(report.figures) == [_TICK.name, _TOCK.name]
    assert report.settings["runs"] == 3 and report.settings["size"] == 64
    assert set(report.details["section_wall_s"]) == {"fake"}
    assert "load_average_end" in report.machine


def test_run_bench_fails_when_a_section_forgets_a_declared_figure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(run, "SECTIONS", {"fake": _fake_section((_TICK,))})
    with pytest.raises(RuntimeError, match=r"fake did not record its declared figures \['test.tock_s'\]"):
        run.run_bench(_TINY, sections=["fake"], workdir=tmp_path)


@pytest.mark.parametrize(
    ("settings", "sections", "message"),
    [
        (BenchSettings(), ["synthesis", "gpu"], r"unknown \['gpu'\]"),
        (BenchSettings(size=100), ["synthesis"], "--size: must be divisible by 32"),
        (BenchSettings(device="tpu"), ["synthesis"], "--device: expected cpu or cuda"),
        (BenchSettings(clock="cycles"), ["synthesis"], "--clock: expected wall or cpu"),
        (BenchSettings(overrides=("model.memory_match=everywhere",)), ["synthesis"], "model.memory_match"),
    ],
)
def test_run_bench_rejects_bad_settings(settings: BenchSettings, sections: list[str], message: str) -> None:
    from memseg.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        run.run_bench(settings, sections=sections)


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
            "data.texture_source": "procedural", "data.num_workers": 1, "model.memory_size": 2, "train.batch_size": 4}}))
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
    monkeypatch.setattr(peak_rss, "_reset_high_water_mark", lambda: False)
    with PeakRSS(interval=0.001) as rss:
        _touch_fresh_pages(64, hold_s=0.1)  # long enough for a loaded machine to run the sampler
    assert rss.method == "sampled"
    assert rss.delta_mib >= 32
