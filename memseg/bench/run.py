"""``run_bench``: the sections of this package, run in the order asked, into one report.

The sweep overhead is not here: it needs Ray, so it lives with the sweeps code
(``sweeps/bench_overhead.py``) and adds its figure to the same report.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from memseg.bench import inference, loader, synthesis, training
from memseg.bench.figures import Figure
from memseg.bench.machine import load_average, machine_info, torch_threads
from memseg.bench.report import BenchReport
from memseg.bench.workload import BenchSettings, Section, make_bench_data
from memseg.errors import ConfigError

SECTIONS: dict[str, Section] = {s.name: s for s in (synthesis.SECTION, loader.SECTION, training.SECTION,
                                                     inference.SECTION)}
# The exported-graph runtimes need the `export` extra (onnx, onnxruntime); without it the bench runs
# the other sections and this one is unknown rather than every section failing to import.
if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None:
    SECTIONS["deployment"] = importlib.import_module("memseg.bench.deployment").SECTION


def declared_figures() -> list[Figure]:
    """Every figure of this package's sections, in section order."""
    return [f for s in SECTIONS.values() for f in s.figures]


def run_bench(
    settings: BenchSettings,
    *,
    sections: Sequence[str] | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the requested sections and return the report.

    Args:
        settings: what to measure.
        sections: any of ``synthesis``, ``loader``, ``training``, ``inference``, ``deployment`` (None: all,
            in that order; ``deployment`` only with the ``export`` extra installed).
        workdir: where the generated data goes (default: a temporary folder, removed afterwards).
        log: called with a line before each section (progress).

    Raises:
        ConfigError: for an unknown section, a CUDA device on a machine without one, or a bad setting.
    """
    sections = list(SECTIONS) if sections is None else sections
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        msg = f"bench sections: unknown {unknown} (known: {', '.join(SECTIONS)})"
        raise ConfigError(msg)
    settings.check()
    log = log or (lambda _line: None)
    with torch_threads(settings.threads):
        report = BenchReport(
            machine=machine_info(settings.device),
            settings={**asdict(settings), "runs": settings.runs, "n_workers": settings.n_workers,
                      "torch_threads": torch.get_num_threads()},
        )
        section_wall_s: dict[str, float] = {}
        report.details["section_wall_s"] = section_wall_s
        with tempfile.TemporaryDirectory(prefix="memseg-bench-") as tmp:
            out = Path(workdir) if workdir is not None else Path(tmp)
            log(f"generating {settings.memory_size} memory + training images at {settings.source_size} px")
            data = make_bench_data(settings, out / "data")
            for name in sections:
                log(f"measuring {name}")
                started = time.perf_counter()
                section = SECTIONS[name]
                section.measure(settings, data, report)
                section_wall_s[name] = time.perf_counter() - started
                missing = [f.name for f in section.figures if f.name not in report.figures]
                if missing:
                    msg = f"bench section {name} did not record its declared figures {missing}"
                    raise RuntimeError(msg)
        loader.derive_worker_rate(settings, report)
        report.machine["load_average_end"] = load_average()
    return report
