"""``memseg bench --compare``: changes beyond the min-max noise, in the direction each figure declares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memseg.bench.compare import UNDECLARED, compare_reports, format_comparison, load_report, regressions
from memseg.bench.figures import Better, Figure
from memseg.bench.run import declared_figures
from memseg.errors import ConfigError
from pipelines.cli import main

OVERHEAD = Figure("sweep.overhead_share", "share", Better.LOWER, "declared by the sweeps layer")
FIGURES = [*declared_figures(), OVERHEAD]


def _fig(median: float, lo: float, hi: float, unit: str, runs: int = 5) -> dict[str, Any]:
    return {"median": median, "min": lo, "max": hi, "unit": unit, "runs": runs}


def _report(commit: str, **figures: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "machine": {"cpu_model": "AMD EPYC", "git_commit": commit, "env": {}},
        "settings": {"size": 256},
        "figures": {name.replace("__", "."): fig for name, fig in figures.items()},
    }


BASE = _report(
    "aaa",
    train__step_s=_fig(3.5, 3.4, 3.6, "s"),
    infer__batch8_images_per_s=_fig(6.2, 6.1, 6.3, "images/s"),
    memory__build_s=_fig(0.62, 0.60, 0.70, "s"),
    train__peak_host_memory_mib=_fig(2600, 2600, 2600, "MiB", runs=1),
    train__peak_gpu_memory_mib={"skipped": "CPU run"},
    sweep__overhead_share=_fig(0.8, 0.79, 0.81, "share"),
)
NEW = _report(
    "bbb",
    train__step_s=_fig(4.2, 4.1, 4.3, "s"),  # slower: worse although the number grew
    infer__batch8_images_per_s=_fig(7.0, 6.9, 7.1, "images/s"),  # faster: better
    memory__build_s=_fig(0.65, 0.61, 0.69, "s"),  # ranges overlap: noise
    train__peak_host_memory_mib=_fig(2650, 2650, 2650, "MiB", runs=1),  # +1.9 %, inside +-5 %
    train__peak_gpu_memory_mib={"skipped": "CPU run"},
)


def test_verdicts_follow_the_unit_and_the_ranges() -> None:
    changes = {c.name: c for c in compare_reports(BASE, NEW, FIGURES)}
    assert changes["train.step_s"].verdict == "worse"
    assert changes["train.step_s"].change == pytest.approx(0.2)
    assert changes["infer.batch8_images_per_s"].verdict == "better"
    assert changes["memory.build_s"].verdict == "within noise"
    assert changes["train.peak_host_memory_mib"].verdict == "within noise"
    assert changes["train.peak_gpu_memory_mib"].verdict == "skipped in both"
    assert changes["sweep.overhead_share"].verdict == "only in base"
    assert [c.name for c in regressions(list(changes.values()), 0.1)] == ["train.step_s"]
    assert regressions(list(changes.values()), 0.25) == []
    text = format_comparison(BASE, NEW, list(changes.values()))
    assert "machine.git_commit: aaa  ->  bbb" in text
    assert "1 better, 1 worse, 2 within noise" in text
    assert [c.name for c in compare_reports(BASE, NEW, FIGURES)][:2] == ["train.step_s", "train.peak_host_memory_mib"]


def test_the_declared_direction_decides_not_the_unit() -> None:
    """A share that is better higher and a rate that is better lower: the declaration wins."""
    hit_rate = Figure("cache.hit_share", "share", Better.HIGHER, "")
    wait = Figure("queue.wait_samples_per_s", "samples/s", Better.LOWER, "")
    base = _report("a", cache__hit_share=_fig(0.5, 0.49, 0.51, "share"),
                   queue__wait_samples_per_s=_fig(10, 9, 11, "samples/s"))
    new = _report("a", cache__hit_share=_fig(0.7, 0.69, 0.71, "share"),
                  queue__wait_samples_per_s=_fig(20, 19, 21, "samples/s"))
    changes = {c.name: c for c in compare_reports(base, new, [hit_rate, wait])}
    assert changes["cache.hit_share"].verdict == "better"
    assert changes["queue.wait_samples_per_s"].verdict == "worse"
    assert [c.name for c in regressions(list(changes.values()), 0.5)] == ["queue.wait_samples_per_s"]


def test_an_undeclared_figure_gets_its_change_but_no_verdict() -> None:
    base = _report("a", extra__thing=_fig(1.0, 0.9, 1.1, "s"))
    new = _report("a", extra__thing=_fig(3.0, 2.9, 3.1, "s"))
    (change,) = compare_reports(base, new, FIGURES)
    assert change.name == "extra.thing" and change.change == pytest.approx(2.0)
    assert change.verdict == UNDECLARED and change.better is None
    assert regressions([change], 0.0) == []


def test_load_report_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read bench report"):
        load_report(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ConfigError, match=r"other\.json: not a memseg bench report"):
        load_report(other)


def test_cli_exits_1_only_on_a_regression_beyond_the_allowance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(BASE))
    new.write_text(json.dumps(NEW))
    assert main(["bench", "--compare", str(base), str(new)]) == 0
    assert "train.step_s" in capsys.readouterr().out
    assert main(["bench", "--compare", str(base), str(new), "--max-regression", "10"]) == 1
    assert "REGRESSION train.step_s: +20.0%" in capsys.readouterr().out
    assert main(["bench", "--compare", str(base), str(new), "--max-regression", "30"]) == 0
    assert main(["bench", "--compare", str(base), str(tmp_path / "nope.json")]) == 1
    assert "nope.json: cannot read bench report" in capsys.readouterr().err
