"""``memseg bench`` end to end: the real command, a tiny size, every figure present and positive.

A smoke test of the command, not of speed: no figure is compared with a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memseg.bench.run import declared_figures
from sweeps.bench_figures import FIGURES as SWEEP_FIGURES

FIGURES = {f.name: f.unit for f in [*declared_figures(), *SWEEP_FIGURES]}

CPU_ONLY_SKIPS = {"train.peak_gpu_memory_mib"}


# `memseg` with Ray, MLflow and Optuna made unimportable, as on a bare GPU node.
WITHOUT_SWEEP_STACK = (
    "import sys\n"
    "for name in ('ray', 'mlflow', 'optuna'):\n"
    "    sys.modules[name] = None\n"
    "from pipelines.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _bench(
    tmp_path: Path, *args: str, timeout: int = 900, without_sweep_stack: bool = False
) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "out.json"
    entry = ["-c", WITHOUT_SWEEP_STACK] if without_sweep_stack else ["-m", "pipelines.cli"]
    proc = subprocess.run(
        [sys.executable, *entry, "bench", "--size", "64", "--quick", "--json", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
    )
    return proc, (json.loads(out.read_text()) if out.is_file() else None)


def _check_figures(doc: dict, skipped: set[str]) -> None:
    figures = doc["figures"]
    assert set(figures) == set(FIGURES), set(FIGURES) ^ set(figures)
    for name, fig in figures.items():
        if name in skipped:
            assert fig["skipped"], name
            continue
        assert "skipped" not in fig, (name, fig)
        assert fig["median"] > 0 and fig["min"] > 0 and fig["max"] > 0, (name, fig)
        assert fig["min"] <= fig["median"] <= fig["max"], (name, fig)
        assert fig["runs"] >= 1 and fig["unit"] == FIGURES[name], (name, fig)


@pytest.mark.ray
def test_bench_quick_with_a_tiny_sweep(tmp_path: Path) -> None:
    proc, doc = _bench(tmp_path, "--sweep-trials", "1", "--sweep-steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc is not None
    _check_figures(doc, CPU_ONLY_SKIPS)
    assert "CPU run" in doc["figures"]["train.peak_gpu_memory_mib"]["skipped"]
    assert doc["figures"]["sweep.overhead_share"]["median"] < 1.0

    machine = doc["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"] and machine["torch"] and machine["device_name"]
    assert machine["device"] == "cpu" and "git_commit" in machine
    settings = doc["settings"]
    assert (settings["size"], settings["source_size"], settings["quick"], settings["weights"]) == (64, 384, True, "none")
    assert settings["n_workers"] >= 1 and settings["runs"] == 3

    # The overhead breakdown adds up: one trial of two steps, tracked in MLflow, its steps inside its cost.
    sweep = doc["details"]["sweep_overhead"]
    assert sweep["settings"]["tracking"] is True and sweep["ray_start_s"] > 0
    (trial,) = sweep["trials"]
    assert trial["steps"] == 2 and 0 < trial["in_step_s"] < trial["trial_wall_s"] + trial["ray_and_driver_share_s"]
    assert trial["overhead_share"] == pytest.approx(doc["figures"]["sweep.overhead_share"]["median"])

    assert doc["derived"]["workers_needed_for_gpu_target"] >= 1
    assert doc["derived"]["worker_batch_mix_samples_per_s"] > 0
    # The table names every figure, in the order the sections declare them.
    rows = [line.split()[0] for line in proc.stdout.splitlines() if line.split() and line.split()[0] in FIGURES]
    assert rows == list(FIGURES)
    assert list(doc["figures"]) == list(FIGURES)


def test_bench_skip_sweep_and_sections_run_without_ray_or_mlflow(tmp_path: Path) -> None:
    proc, doc = _bench(tmp_path, "--skip-sweep", "--sections", "synthesis", "--repeats", "2", without_sweep_stack=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = doc["figures"]
    assert figures["sweep.overhead_share"] == {"skipped": "--skip-sweep"}
    measured = {n for n, f in figures.items() if "skipped" not in f}
    assert measured == {n for n in FIGURES if n.startswith("synthesis.")}
    assert all(figures[n]["runs"] == 2 for n in measured)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--size", "100"], "--size: must be divisible by 32"), (["--device", "tpu"], "--device")],
)
def test_bench_rejects_bad_settings(tmp_path: Path, args: list[str], message: str) -> None:
    proc, doc = _bench(tmp_path, "--skip-sweep", *args, timeout=300)
    assert proc.returncode == 1
    assert message in proc.stderr and doc is None
