"""The leaderboard of a sweep: one row per category, ours beside the paper's where they compare.

Pure: takes plain :class:`CategoryResult` records (``pipelines.report`` reads them from MLflow)
and renders one pandas table three ways: CSV (machine-readable, full precision), Markdown and a
self-contained HTML page with the heat-map examples and each category's Optuna plots embedded as data
URIs, so the page still works when downloaded from MLflow on its own (a plot drawn as an HTML file, with
plotly, is linked instead). Every plot's caption names the trials it is drawn from; a plot withheld
(importances below :data:`pipelines.sweep_plots.MIN_TRIALS_FOR_IMPORTANCES` finished trials) is
replaced by the sentence saying why.

Units: every AUROC/AUPRO column is a percentage (the paper's unit) rounded only when rendered.
"Delta" columns are ours minus the paper's, on the TEST split (the paper reports test figures). The
paper's figures are filled in only for the rows marked ``compare_with_paper`` (MVTec AD data and a
pretrained backbone, :func:`pipelines.provenance.paper_exclusion`); when no row is, the paper and
delta columns are left out, and a sentence says why. The winner's configuration (every swept field,
with the default beside it where it differs) is listed per category below the table.
The "ρ" columns are rank correlations in [-1, 1] (:data:`VAL_TEST_NOTE` says what they mean).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import sweep_gain
from pipelines.paper_results import CAVEAT, SOURCE, paper_figures

if TYPE_CHECKING:  # rendering reads the records only; drawing them (optuna, matplotlib) is the report's
    from pipelines.sweep_plots import StudyPlot

PAPER_COLUMNS = ("paper_image_auroc", "diff_image_auroc", "paper_pixel_auroc", "diff_pixel_auroc")
METRIC_COLUMNS = (
    "val_image_auroc",
    "val_pixel_auroc",
    "val_pixel_aupro",
    "test_image_auroc",
    "test_pixel_auroc",
    "test_pixel_aupro",
    "paper_image_auroc",
    "diff_image_auroc",
    "paper_pixel_auroc",
    "diff_pixel_auroc",
)
# How well validation predicts test across a category's trials; the reason is in the CSV and listed
# under the Markdown/HTML table rather than in a cell.
VAL_TEST_COLUMNS = ("val_test_rho", "val_test_rho_aupro", "val_test_trials", "val_test_reason")
# The sweep gain's columns are in the CSV; Markdown and HTML show them in their own section.
_LISTED_BELOW = frozenset({"val_test_reason", "hyperparameters", *sweep_gain.CSV_COLUMNS})
_GAIN_NUMBERS = tuple(c for c in sweep_gain.CSV_COLUMNS if c != "gain_noise")
VAL_TEST_NOTE = (
    "ρ val/test: Spearman rank correlation, across this category's trials, of the validation selection "
    "metric with the same metric on test (ρ AUPRO: with the test AUPRO), over the trials counted in "
    "\"ρ trials\": how well validation ranking predicts test ranking across this category's trials; "
    "near 1 = selection on validation is trustworthy; - (NaN) = undefined, e.g. fewer than 3 trials."
)
COLUMNS = (
    "category",
    *METRIC_COLUMNS,
    "trials_run",
    "trials_pruned",
    "trials_failed",
    *VAL_TEST_COLUMNS,
    "cpu_hours",
    "gpu_hours",
    "best_trial",
    "model",
    "hyperparameters",
    *sweep_gain.CSV_COLUMNS,
)
HEADERS = {
    "category": "category",
    "val_image_auroc": "val I-AUROC",
    "val_pixel_auroc": "val P-AUROC",
    "val_pixel_aupro": "val AUPRO",
    "test_image_auroc": "test I-AUROC",
    "test_pixel_auroc": "test P-AUROC",
    "test_pixel_aupro": "test AUPRO",
    "paper_image_auroc": "paper I-AUROC",
    "diff_image_auroc": "Δ I-AUROC",
    "paper_pixel_auroc": "paper P-AUROC",
    "diff_pixel_auroc": "Δ P-AUROC",
    "trials_run": "trials",
    "trials_pruned": "pruned",
    "trials_failed": "failed",
    "val_test_rho": "ρ val/test",
    "val_test_rho_aupro": "ρ AUPRO",
    "val_test_trials": "ρ trials",
    "val_test_reason": "ρ undefined because",
    "cpu_hours": "CPU h",
    "gpu_hours": "GPU h",
    "best_trial": "best trial",
    "model": "registered model",
    "hyperparameters": "chosen configuration",
}
MEAN_ROW = "mean"
# Where the repository cites the paper's figures and says what of them is confirmed.
PAPER_DOC = 'docs/report.md, "The paper\'s figures"'
CONFIG_NOTE = (
    "Every field of the search space with the chosen trial's value; \"default\" is the category's resolved "
    "base config (the authors' values unless the sweep's config changes them; the sweep's first trial runs "
    "it), shown where the chosen value differs."
)


@dataclass(frozen=True)
class CategoryResult:
    """What one category's sweep produced.

    Attributes:
        category: the category name.
        val: best trial's validation metrics, keys ``val_image_auroc`` ... as fractions in [0, 1].
        test: the best trial's test metrics (``test_*``), measured once at registration; may be empty.
        params: the winner's value of every swept field, dotted config names.
        defaults: the default of each swept field whose chosen value differs from it.
        trials_run / trials_pruned / trials_failed: trial counts by outcome (run = all trials).
        cpu_hours / gpu_hours: wall time x resources, summed over trials.
        best_trial: the winning trial id.
        model: ``name/version`` of the registered model ("" when not registered).
        heatmaps: PNG files of heat-map overlays to show in the HTML page.
        val_test_rho: Spearman rho across the category's trials of the validation selection metric
            and the same metric on test; NaN when undefined (``val_test_reason`` says why).
        val_test_rho_aupro: the same with the test AUPRO.
        val_test_trials: trials with both figures (what ``val_test_rho`` rests on); -1 when not recorded.
        val_test_reason: why a rho is NaN ("" when both are defined or nothing was recorded).
        compare_with_paper: the paper's MVTec AD figures compare with this row's (MVTec AD data, a
            pretrained backbone); otherwise its paper and delta cells stay empty.
        paper_exclusion: why they do not compare ("" when they do).
        gain: the training-free baseline, the authors' defaults and the chosen trial (None without a winner).
        plots: the category's Optuna plots, drawn or withheld with the reason, each with its trial count.
    """

    category: str
    val: Mapping[str, float] = field(default_factory=dict)
    test: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, object] = field(default_factory=dict)
    trials_run: int = 0
    trials_pruned: int = 0
    trials_failed: int = 0
    cpu_hours: float = 0.0
    gpu_hours: float = 0.0
    best_trial: str = ""
    model: str = ""
    heatmaps: Sequence[Path] = ()
    val_test_rho: float = math.nan
    val_test_rho_aupro: float = math.nan
    val_test_trials: int = -1
    val_test_reason: str = ""
    defaults: Mapping[str, object] = field(default_factory=dict)
    compare_with_paper: bool = False
    paper_exclusion: str = ""
    gain: sweep_gain.SweepGain | None = None
    plots: Sequence[StudyPlot] = ()


def _pct(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def format_value(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _format_params(params: Mapping[str, object], defaults: Mapping[str, object] | None = None) -> str:
    def default(k: str) -> str:
        return f" (default {format_value(defaults[k])})" if defaults and k in defaults else ""

    return ", ".join(f"{k}={format_value(v)}{default(k)}" for k, v in sorted(params.items()))


def build_table(results: Sequence[CategoryResult]) -> pd.DataFrame:
    """One row per category (in the given order) plus a ``mean`` row when there are several.

    Missing figures are NaN (shown as "-"); the paper columns are NaN for rows not marked
    ``compare_with_paper`` (or outside the paper's categories), and absent when no row is marked.
    """
    rows = []
    for r in results:
        paper = paper_figures(r.category) if r.compare_with_paper else None
        row: dict[str, object] = {"category": r.category}
        for split, metrics in (("val", r.val), ("test", r.test)):
            for name in ("image_auroc", "pixel_auroc", "pixel_aupro"):
                row[f"{split}_{name}"] = _pct(metrics.get(f"{split}_{name}"))
        row["paper_image_auroc"] = paper.image_auroc if paper else math.nan
        row["paper_pixel_auroc"] = paper.pixel_auroc if paper else math.nan
        row["diff_image_auroc"] = row["test_image_auroc"] - row["paper_image_auroc"]  # type: ignore[operator]
        row["diff_pixel_auroc"] = row["test_pixel_auroc"] - row["paper_pixel_auroc"]  # type: ignore[operator]
        row.update(
            trials_run=r.trials_run,
            trials_pruned=r.trials_pruned,
            trials_failed=r.trials_failed,
            cpu_hours=float(r.cpu_hours),
            gpu_hours=float(r.gpu_hours),
            best_trial=r.best_trial,
            model=r.model,
            hyperparameters=_format_params(r.params, r.defaults),
            val_test_rho=float(r.val_test_rho),
            val_test_rho_aupro=float(r.val_test_rho_aupro),
            val_test_trials=r.val_test_trials if r.val_test_trials >= 0 else "",
            val_test_reason=r.val_test_reason,
        )
        row.update(r.gain.csv_fields() if r.gain is not None else {c: math.nan for c in _GAIN_NUMBERS})
        rows.append(row)
    columns = [c for c in COLUMNS if c not in PAPER_COLUMNS or any(r.compare_with_paper for r in results)]
    table = pd.DataFrame(rows, columns=columns)
    if len(rows) > 1:
        mean: dict[str, object] = {c: "" for c in columns}
        mean["category"] = MEAN_ROW
        for c in (*METRIC_COLUMNS, *_GAIN_NUMBERS):
            if c in table.columns:
                mean[c] = table[c].mean(skipna=True) if table[c].notna().any() else math.nan
        for c in ("trials_run", "trials_pruned", "trials_failed", "cpu_hours", "gpu_hours"):
            mean[c] = table[c].sum()  # totals, not means: the budget the sweep used
        table = pd.concat([table, pd.DataFrame([mean], columns=columns)], ignore_index=True)
    for c in ("trials_run", "trials_pruned", "trials_failed"):
        table[c] = table[c].astype("int64")
    return table


def _cell(column: str, value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if column.startswith("diff_"):
            return f"{value:+.2f}"
        if column.endswith("_hours"):
            return f"{value:.3f}"
        return f"{value:.2f}"
    return str(value)


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in table.columns if c not in _LISTED_BELOW]]


def _display_rows(table: pd.DataFrame) -> list[list[str]]:
    return [[_cell(c, row[c]) for c in table.columns] for _, row in table.iterrows()]


def val_test_lines(table: pd.DataFrame) -> list[str]:
    """The explanation of the ρ columns, then one line per category whose ρ is undefined, with the reason."""
    reasons = [f"{row['category']}: {row['val_test_reason']}" for _, row in table.iterrows()
               if row.get("val_test_reason")]
    return [VAL_TEST_NOTE, *(f"ρ undefined for {r}" for r in reasons)]


def has_paper_columns(table: pd.DataFrame) -> bool:
    return any(c in table.columns for c in PAPER_COLUMNS)


def paper_lines(table: pd.DataFrame, results: Sequence[CategoryResult] = ()) -> list[str]:
    """Where the paper's figures are shown, their caveat and source; for the rows without them, why."""
    shown = has_paper_columns(table)
    lines = [CAVEAT, f"paper figures: {SOURCE} (see {PAPER_DOC})"] if shown else []
    by_reason: dict[str, list[str]] = {}
    for r in results:
        if not r.compare_with_paper:
            by_reason.setdefault(r.paper_exclusion or "not marked as comparable", []).append(r.category)
    if len(by_reason) == 1 and not shown:
        lines.append(f"The paper's MVTec AD figures and the deltas to them are left out: {next(iter(by_reason))}.")
    elif by_reason:
        what = "No paper figures for" if shown else "The paper's MVTec AD figures are left out for"
        lines.append(f"{what} " + "; ".join(f"{', '.join(c)}: {reason}" for reason, c in by_reason.items()) + ".")
    return lines


def _metrics_note(table: pd.DataFrame) -> str:
    return "Metrics in %. Δ = our test figure minus the paper's." if has_paper_columns(table) else "Metrics in %."


def config_rows(result: CategoryResult) -> list[tuple[str, str, str]]:
    """(field, chosen value, default where it differs or "(same)") for every swept field of a category."""
    return [
        (k, format_value(v), format_value(result.defaults[k]) if k in result.defaults else "(same)")
        for k, v in sorted(result.params.items())
    ]


def _config_title(result: CategoryResult) -> str:
    return f"{result.category}: trial {result.best_trial or '-'}"


def _relative(path: Path, base: Path | None) -> str:
    """``path`` as a link from a page in ``base`` (its name alone when it is not below ``base``)."""
    if base is not None:
        try:
            return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).name


def _plot_markdown(results: Sequence[CategoryResult], base: Path | None) -> list[str]:
    lines = []
    for r in results:
        for plot in r.plots:
            shown = f"[{_relative(plot.path, base)}]({_relative(plot.path, base)})" if plot.path else plot.reason
            lines.append(f"- {r.category}, {plot.caption}: {shown}")
    return ["", "## Optuna plots", "", *lines] if lines else []


def render_markdown(
    table: pd.DataFrame,
    *,
    title: str,
    notes: Sequence[str] = (),
    results: Sequence[CategoryResult] = (),
    base: Path | None = None,
) -> str:
    """GitHub-flavoured Markdown (written by hand: ``DataFrame.to_markdown`` needs ``tabulate``).

    ``results`` (the rows' records) add why the paper's figures are left out, each winner's configuration
    and links to the Optuna plots (relative to ``base``, the page's folder).
    """

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    below = val_test_lines(table)
    paper = paper_lines(table, results)
    metrics_note = _metrics_note(table)
    table = _shown(table)
    headers = [HEADERS.get(c, c) for c in table.columns]
    numeric = [c in METRIC_COLUMNS or c.startswith(("trials_", "cpu_", "gpu_", "val_test_")) for c in table.columns]
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in (*notes, *paper)]
    lines += ["", "| " + " | ".join(esc(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for cells in _display_rows(table):
        lines.append("| " + " | ".join(esc(v) for v in cells) + " |")
    lines.append("")
    lines.append(metrics_note)
    lines += ["", *(f"- {line}" for line in below)]
    gain = sweep_gain.markdown_lines([r.gain for r in results if r.gain is not None])
    if gain:
        lines += ["", *gain]
    if results:
        lines += ["", "## Chosen configuration", "", CONFIG_NOTE]
    for r in results:
        lines += ["", f"### {esc(_config_title(r))}", "", "| field | chosen | default |", "|---|---:|---:|"]
        lines += [f"| {esc(k)} | {esc(v)} | {esc(d)} |" for k, v, d in config_rows(r)]
    lines += _plot_markdown(results, base)
    return "\n".join(lines) + "\n"


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(
    table: pd.DataFrame,
    *,
    title: str,
    notes: Sequence[str] = (),
    heatmaps: Mapping[str, Sequence[Path]] | None = None,
    results: Sequence[CategoryResult] = (),
    base: Path | None = None,
) -> str:
    """A self-contained page: the table, each winner's configuration, each category's Optuna plots, then
    heat-map examples per category (PNG data URIs; a plot that is an HTML file is linked relative to
    ``base``, the page's folder)."""
    below = val_test_lines(table)
    paper = paper_lines(table, results)
    metrics_note = _metrics_note(table)
    table = _shown(table)
    headers = "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in table.columns)
    body = []
    for cells, (_, row) in zip(_display_rows(table), table.iterrows(), strict=True):
        tds = []
        for c, text in zip(table.columns, cells, strict=True):
            value = row[c]
            cls = ""
            if c.startswith("diff_") and isinstance(value, float) and not math.isnan(value):
                cls = ' class="neg"' if value < 0 else ' class="pos"'
            tds.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child"
        "{text-align:left}.neg{color:#b00}.pos{color:#070}figure{display:inline-block;margin:4px;vertical-align:top}"
        "img{max-width:100%}.plot img{width:640px}figcaption{font-size:12px}.withheld{font-style:italic}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in (*notes, *paper)) + "</ul>",
        f"<table><thead><tr>{headers}</tr></thead><tbody>{''.join(body)}</tbody></table>",
        f"<p>{html.escape(metrics_note)}</p>",
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in below) + "</ul>",
    ]
    parts += _gain_html([r.gain for r in results if r.gain is not None])
    if results:
        parts += ["<h2>Chosen configuration</h2>", f"<p>{html.escape(CONFIG_NOTE)}</p>"]
    for r in results:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td><td>{html.escape(d)}</td></tr>"
            for k, v, d in config_rows(r)
        )
        parts.append(f"<h3>{html.escape(_config_title(r))}</h3><table><thead><tr><th>field</th><th>chosen</th>"
                     f"<th>default</th></tr></thead><tbody>{rows}</tbody></table>")
    for r in results:
        parts += _plots_html(r, base)
    for category, pngs in (heatmaps or {}).items():
        if not pngs:
            continue
        parts.append(f"<h2>{html.escape(category)}: heat-map examples (test split)</h2><div>")
        for png in pngs:
            parts.append(
                f'<figure><img src="{_data_uri(Path(png))}" alt="{html.escape(Path(png).name)}">'
                f"<figcaption>{html.escape(Path(png).name)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _plots_html(result: CategoryResult, base: Path | None) -> list[str]:
    """One category's Optuna plots: each embedded (PNG) or linked (HTML) under its caption, or the
    sentence that stands in for it."""
    if not result.plots:
        return []
    parts = [f"<h2>{html.escape(result.category)}: Optuna plots</h2><div>"]
    for plot in result.plots:
        caption = html.escape(plot.caption)
        if plot.path is None:
            parts.append(f'<p class="withheld">{caption}: {html.escape(plot.reason)}</p>')
        elif Path(plot.path).suffix == ".png":
            parts.append(f'<figure class="plot"><img src="{_data_uri(Path(plot.path))}" alt="{caption}">'
                         f"<figcaption>{caption}</figcaption></figure>")
        else:
            href = html.escape(_relative(Path(plot.path), base), quote=True)
            parts.append(f'<p class="plot"><a href="{href}">{caption}</a></p>')
    parts.append("</div>")
    return parts


def _gain_html(gains: Sequence[sweep_gain.SweepGain]) -> list[str]:
    """The "Sweep gain" section as HTML (nothing without categories)."""
    if not gains:
        return []
    head = "".join(f"<th>{html.escape(h)}</th>" for h in sweep_gain.HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in sweep_gain.table_rows(gains))
    return [
        "<h2>Sweep gain</h2>", f"<p>{html.escape(sweep_gain.SECTION_NOTE)}</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in sweep_gain.summary_lines(gains)) + "</ul>",
    ]


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    html: Path


def write_report(
    results: Sequence[CategoryResult], out_dir: Path, *, title: str, notes: Sequence[str] = ()
) -> ReportFiles:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_table(results)
    files = ReportFiles(out_dir / "leaderboard.md", out_dir / "leaderboard.csv", out_dir / "leaderboard.html")
    files.markdown.write_text(render_markdown(table, title=title, notes=notes, results=results, base=out_dir))
    table.to_csv(files.csv, index=False)
    heatmaps = {r.category: list(r.heatmaps) for r in results}
    files.html.write_text(render_html(table, title=title, notes=notes, heatmaps=heatmaps, results=results,
                                      base=out_dir))
    return files
