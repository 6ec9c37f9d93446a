"""The bench report: figures in declaration order, the JSON file and the text table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memseg.bench.figures import Figure, Stats

SCHEMA_VERSION = 1

# A figure in the JSON: {"median", "min", "max", "unit", "runs"}, or {"skipped": reason} where it does
# not apply to a run (GPU memory on the CPU) or could not be measured; never left out.
FigureEntry = dict[str, float | int | str]


@dataclass
class BenchReport:
    """Everything one ``memseg bench`` run found.

    Attributes:
        machine: CPU model, cores, torch version, device name, git commit, load average...
        settings: the bench settings as plain values.
        figures: name -> :data:`FigureEntry`, in the order the sections recorded them.
        derived: plain numbers computed from the figures (workers a GPU trial needs...).
        details: extra per-section information (e.g. the sweep-overhead breakdown).
        declared: the :class:`Figure` of every recorded name (not written to the JSON: the unit is
            in each entry, the direction in the code that declares the figure).
    """

    machine: dict[str, object]
    settings: dict[str, object]
    figures: dict[str, FigureEntry] = field(default_factory=dict)
    derived: dict[str, float | int | str] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    declared: dict[str, Figure] = field(default_factory=dict)

    def add(self, figure: Figure, stats: Stats) -> None:
        self.declared[figure.name] = figure
        self.figures[figure.name] = {
            "median": stats.median, "min": stats.min, "max": stats.max, "unit": figure.unit, "runs": stats.runs,
        }

    def skip(self, figure: Figure, reason: str) -> None:
        self.declared[figure.name] = figure
        self.figures[figure.name] = {"skipped": reason}

    def median(self, figure: Figure) -> float | None:
        value = self.figures.get(figure.name, {}).get("median")
        return float(value) if isinstance(value, int | float) else None

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "machine": self.machine,
            "settings": self.settings,
            "figures": self.figures,
            "derived": self.derived,
            "details": self.details,
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
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
    """A readable table: figure, median, min, max, unit and which way is better; then the derived values."""
    s, m = report.settings, report.machine
    head = (
        f"memseg bench: {s.get('device')} ({m.get('device_name')}), {s.get('size')} px from "
        f"{s.get('source_size')} px sources, {m.get('cpu_count')} CPUs, torch {m.get('torch')} "
        f"({s.get('torch_threads')} threads), commit {str(m.get('git_commit'))[:10]}"
    )
    rows = [("figure", "median", "min", "max", "unit", "better")]
    for name, entry in report.figures.items():
        if "skipped" in entry:
            rows.append((name, "skipped", "", "", "", str(entry["skipped"])[:60]))
            continue
        figure = report.declared.get(name)
        rows.append((name, fmt(float(entry["median"])), fmt(float(entry["min"])), fmt(float(entry["max"])),
                     str(entry["unit"]), figure.better.value if figure else ""))
    lines = [head, "", *render_rows(rows)]
    if report.derived:
        lines.append("")
        lines.extend(f"{k}: {fmt(v) if isinstance(v, float) else v}" for k, v in report.derived.items())
    return "\n".join(lines)
