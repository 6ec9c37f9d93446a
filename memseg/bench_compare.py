"""Compare two ``memseg bench --json`` reports: two commits on one machine, or two machines.

Each figure's medians are compared, and the change counts only where the two runs' [min, max]
ranges do not overlap. That is the noise a shared machine adds. A figure measured once (peak memory)
has no range, so it gets +-5 % of its median. Seconds, milliseconds, MiB and the
overhead share are better lower; rates are better higher. What differs between the machines (CPU,
torch, device, thread settings) is printed first, because a comparison across machines is a
comparison of machines, not of code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memseg.bench import FIGURES, fmt, render_rows
from memseg.config import read_yaml_mapping
from memseg.errors import ConfigError

LOWER_IS_BETTER_UNITS = frozenset({"s", "ms", "MiB", "share"})
# Machine fields worth showing when they differ (the rest, e.g. load average, always differ).
MACHINE_FIELDS = ("cpu_model", "cpu_count", "cpus_available", "torch", "device", "device_name", "git_commit", "env")
SINGLE_RUN_TOLERANCE = 0.05

BETTER, WORSE, NOISE = "better", "worse", "within noise"


@dataclass(frozen=True)
class FigureChange:
    """One figure in both reports.

    Attributes:
        name: the figure (``train.step_s``).
        unit: its unit.
        base: median in the base report (None: missing or skipped there).
        new: median in the new report (None: missing or skipped there).
        change: ``new / base - 1`` of the medians (None when either is missing).
        verdict: ``better``, ``worse``, ``within noise`` (ranges overlap), or why there is no comparison.
    """

    name: str
    unit: str
    base: float | None
    new: float | None
    change: float | None
    verdict: str


def load_report(path: str | Path) -> dict[str, Any]:
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


def _measured(figure: Any) -> bool:
    return isinstance(figure, Mapping) and "median" in figure


def _range(figure: Mapping[str, Any]) -> tuple[float, float]:
    if int(figure.get("runs", 1)) < 2:
        m = float(figure["median"])
        return m - abs(m) * SINGLE_RUN_TOLERANCE, m + abs(m) * SINGLE_RUN_TOLERANCE
    return float(figure["min"]), float(figure["max"])


def _verdict(base: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    lower_better = base.get("unit") in LOWER_IS_BETTER_UNITS
    (b_lo, b_hi), (n_lo, n_hi) = _range(base), _range(new)
    if n_lo > b_hi:
        return WORSE if lower_better else BETTER
    if n_hi < b_lo:
        return BETTER if lower_better else WORSE
    return NOISE


def compare_reports(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[FigureChange]:
    """Every figure of either report, in the bench's order, with its change and verdict."""
    bf, nf = base["figures"], new["figures"]
    names = [*FIGURES, *sorted((set(bf) | set(nf)) - set(FIGURES))]
    out = []
    for name in names:
        b, n = bf.get(name), nf.get(name)
        if b is None and n is None:
            continue
        unit = (b or n or {}).get("unit", FIGURES.get(name, ("", ""))[0])
        if not (_measured(b) and _measured(n)):
            if b is None or n is None:
                why = "only in new" if b is None else "only in base"
            else:
                why = "skipped in " + ("both" if not (_measured(b) or _measured(n)) else "base" if _measured(n) else "new")
            out.append(FigureChange(name, unit, b.get("median") if _measured(b) else None,
                                    n.get("median") if _measured(n) else None, None, why))
            continue
        change = n["median"] / b["median"] - 1 if b["median"] else None
        out.append(FigureChange(name, unit, b["median"], n["median"], change, _verdict(b, n)))
    return out


def regressions(changes: Sequence[FigureChange], max_regression: float) -> list[FigureChange]:
    """Figures that got worse beyond noise by more than ``max_regression`` (0.1 = 10 %)."""
    out = []
    for c in changes:
        if c.verdict != WORSE or c.change is None:
            continue
        loss = c.change if c.unit in LOWER_IS_BETTER_UNITS else -c.change
        if loss > max_regression:
            out.append(c)
    return out


def machine_differences(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(field, base, new)`` for the machine and settings fields that differ."""
    out = []
    for section, fields in (("machine", MACHINE_FIELDS), ("settings", None)):
        b, n = base.get(section) or {}, new.get(section) or {}
        for key in fields or sorted(set(b) | set(n)):
            if b.get(key) != n.get(key):
                out.append((f"{section}.{key}", str(b.get(key)), str(n.get(key))))
    return out


def format_comparison(base: Mapping[str, Any], new: Mapping[str, Any], changes: Sequence[FigureChange]) -> str:
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
    lines.append(f"{counts[BETTER]} better, {counts[WORSE]} worse, {counts[NOISE]} within noise (min-max ranges overlap)")
    return "\n".join(lines)
