"""Compare two ``memseg bench --json`` reports: two commits on one machine, or two machines.

Each figure's medians are compared, and the change counts only where the two runs' [min, max]
ranges do not overlap. That is the noise a shared machine adds. A figure measured once (peak memory)
has no range, so it gets +-5 % of its median. Which way is better comes from the figure's
declaration (:class:`~memseg.bench.figures.Figure`). What differs between the machines (CPU, torch,
device, thread settings) is printed first, because a comparison across machines is a comparison of
machines, not of code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memseg.bench.figures import Better, Figure
from memseg.bench.report import fmt, render_rows
from memseg.config import read_yaml_mapping
from memseg.errors import ConfigError

# Machine fields worth showing when they differ (the rest, e.g. load average, always differ).
MACHINE_FIELDS = ("cpu_model", "cpu_count", "cpus_available", "torch", "device", "device_name", "git_commit", "env")
SINGLE_RUN_TOLERANCE = 0.05

BETTER, WORSE, NOISE = "better", "worse", "within noise"

# A report as read back from its JSON file: plain data of any bench version, checked where used.
ReportDoc = Mapping[str, Any]
UNDECLARED = "no direction (figure not declared)"


@dataclass(frozen=True)
class FigureChange:
    """One figure in both reports.

    Attributes:
        name: the figure (``train.step_s``).
        unit: its unit.
        base: median in the base report (None: missing or skipped there).
        new: median in the new report (None: missing or skipped there).
        change: ``new / base - 1`` of the medians (None when either is missing).
        verdict: ``better``, ``worse``, ``within noise`` (ranges overlap), or why there is no verdict.
        better: the declared direction (None for a figure no section declares).
    """

    name: str
    unit: str
    base: float | None
    new: float | None
    change: float | None
    verdict: str
    better: Better | None = None


def load_report(path: str | Path) -> ReportDoc:
    """Read a ``memseg bench --json`` file.

    Raises:
        ConfigError: naming the file when it cannot be read or is not a bench report.
    """
    path = Path(path)
    report = read_yaml_mapping(path, "bench report")  # JSON is YAML: one reader for every config-like file
    if not isinstance(report.get("figures"), dict):
        msg = f"{path}: not a memseg bench report (no 'figures' mapping; write one with memseg bench --json)"
        raise ConfigError(msg)
    return report


def _median(entry: object) -> float | None:
    if isinstance(entry, Mapping) and isinstance(entry.get("median"), int | float):
        return float(entry["median"])
    return None


def _range(entry: Mapping[str, Any]) -> tuple[float, float]:
    if int(entry.get("runs", 1)) < 2:
        m = float(entry["median"])
        return m - abs(m) * SINGLE_RUN_TOLERANCE, m + abs(m) * SINGLE_RUN_TOLERANCE
    return float(entry["min"]), float(entry["max"])


def _verdict(base: Mapping[str, Any], new: Mapping[str, Any], better: Better) -> str:
    (b_lo, b_hi), (n_lo, n_hi) = _range(base), _range(new)
    if n_lo > b_hi:
        return BETTER if better is Better.HIGHER else WORSE
    if n_hi < b_lo:
        return WORSE if better is Better.HIGHER else BETTER
    return NOISE


def _missing(base: object, new: object) -> str:
    if base is None or new is None:
        return "only in new" if base is None else "only in base"
    if _median(base) is None and _median(new) is None:
        return "skipped in both"
    return "skipped in base" if _median(base) is None else "skipped in new"


def compare_reports(base: ReportDoc, new: ReportDoc, figures: Sequence[Figure]) -> list[FigureChange]:
    """Every figure of either report with its change and verdict: the declared ``figures`` first, in
    their order, then any other name sorted (compared, but without a verdict)."""
    declared = {f.name: f for f in figures}
    bf, nf = base["figures"], new["figures"]
    names = [*declared, *sorted((set(bf) | set(nf)) - set(declared))]
    out = []
    for name in names:
        b, n = bf.get(name), nf.get(name)
        if b is None and n is None:
            continue
        figure = declared.get(name)
        unit = figure.unit if figure else str((b or n or {}).get("unit", ""))
        b_median, n_median = _median(b), _median(n)
        better = figure.better if figure else None
        if b_median is None or n_median is None:
            out.append(FigureChange(name, unit, b_median, n_median, None, _missing(b, n), better))
            continue
        change = n_median / b_median - 1 if b_median else None
        verdict = _verdict(b, n, figure.better) if figure else UNDECLARED
        out.append(FigureChange(name, unit, b_median, n_median, change, verdict, better))
    return out


def regressions(changes: Sequence[FigureChange], max_regression: float) -> list[FigureChange]:
    """Figures that got worse beyond noise by more than ``max_regression`` (0.1 = 10 %)."""
    out = []
    for c in changes:
        if c.verdict != WORSE or c.change is None:
            continue
        loss = c.change if c.better is Better.LOWER else -c.change
        if loss > max_regression:
            out.append(c)
    return out


def machine_differences(base: ReportDoc, new: ReportDoc) -> list[tuple[str, str, str]]:
    """``(field, base, new)`` for the machine and settings fields that differ."""
    out = []
    for section, fields in (("machine", MACHINE_FIELDS), ("settings", None)):
        b, n = base.get(section) or {}, new.get(section) or {}
        for key in fields or sorted(set(b) | set(n)):
            if b.get(key) != n.get(key):
                out.append((f"{section}.{key}", str(b.get(key)), str(n.get(key))))
    return out


def format_comparison(base: ReportDoc, new: ReportDoc, changes: Sequence[FigureChange]) -> str:
    """The comparison as text: differing machine/settings fields, then a row per figure."""
    lines = []
    diffs = machine_differences(base, new)
    if diffs:
        lines.append("differs between the runs:")
        lines.extend(f"  {key}: {b}  ->  {n}" for key, b, n in diffs)
        lines.append("")
    rows = [("figure", "base", "new", "change", "unit", "verdict")]
    for c in changes:
        change = f"{c.change:+.1%}" if c.change is not None else "-"
        rows.append((c.name, fmt(c.base), fmt(c.new), change, c.unit, c.verdict))
    lines.extend(render_rows(rows))
    counts = {v: sum(c.verdict == v for c in changes) for v in (BETTER, WORSE, NOISE)}
    lines.append("")
    lines.append(
        f"{counts[BETTER]} better, {counts[WORSE]} worse, {counts[NOISE]} within noise (min-max ranges overlap)"
    )
    return "\n".join(lines)
