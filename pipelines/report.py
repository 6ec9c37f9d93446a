"""The report stage: a sweep's leaderboard and Optuna plots, read back from MLflow.

Everything comes from the tracking server (and the sweep manifest for the trial resources), so the
report can be written by anyone, any time after the sweep, on any machine that reaches the server:

* at the top (and in the pipeline's console summary), what produced the figures
  (:mod:`pipelines.provenance`): the dataset (kind, name, fingerprints, image count per split), image
  size, training steps, backbone weights, the validation set's size and the trials; the paper's
  figures and the deltas to them only where the data is MVTec AD and the backbone pretrained,
  otherwise one sentence says why they are left out;
* per category (the sweep's parent runs): trial counts by outcome, CPU/GPU hours (trial run wall
  time x the trial's resources from the sweep manifest), the winner's validation figures and its
  test figures (from the registered version's tags, measured once at registration), the winner's
  value of every field of the search space with the default beside it where it differs, the
  registered model, the test heat-map panels logged at
  registration, how well validation predicted test across the category's trials (the Spearman
  rho the sweep stage wrote to the parent run when the study ended, see
  :data:`pipelines.schema.VAL_TEST_SPEARMAN`), and the texture source its anomaly synthesis used
  (``data.texture_source``: DTD as in the paper, or generated textures), in the report's notes;
* per category, the sweep gain (:mod:`pipelines.sweep_gain`): the training-free baseline and the
  authors'-defaults trial (both recorded by the sweep stage, :mod:`pipelines.gain_tracking`) beside the
  chosen trial, on validation and test, with the overall line and whether the choice is noise; the
  compared figures are logged on the parent run;
* :mod:`pipelines.leaderboard` renders CSV/Markdown/HTML next to the paper's figures;
* :mod:`pipelines.sweep_plots` rebuilds each category's Optuna study from its trial runs and draws
  it; the plots are embedded in the HTML page under captions naming their trial counts, and go to that
  category's parent run (``optuna/``); a plot withheld (importances below
  :data:`pipelines.sweep_plots.MIN_TRIALS_FOR_IMPORTANCES` finished trials) goes there as
  ``optuna/<plot>.txt`` with the sentence the page shows instead. The leaderboard goes to every parent
  run of the sweep (``report/``). Re-running overwrites both.

Trials stopped early by ASHA enter the rebuilt study as COMPLETE with their last best-so-far value,
which is what Ray's OptunaSearch told the live study. The plots' objective is the category's
``tune_metric`` (the best-so-far value of its selection metric), read from its parent run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from memseg.metrics import keys
from pipelines import leaderboard, provenance, registry, schema, sweep_gain, sweep_plots
from pipelines.paper_results import paper_categories
from pipelines.schema import (
    HEATMAP_DIR,
    PLOTS_ARTIFACT_DIR,
    REPORT_ARTIFACT_DIR,
    ParentRun,
    RegisteredVersion,
    TrialRun,
)
from sweeps.driver import read_manifest
from sweeps.search_space import load_space

log = logging.getLogger(__name__)

TEXTURE_SOURCE = "data.texture_source"

_STATE = {"finished": sweep_plots.COMPLETE, "pruned": sweep_plots.COMPLETE, "failed": sweep_plots.FAIL}


@dataclass
class CategoryReport:
    """One category's row, the metric it was selected on, its rebuilt study's plot files (all of its plots,
    drawn or withheld, are ``result.plots``) and where they were logged."""

    result: leaderboard.CategoryResult
    parent_run_id: str
    selection_metric: str
    plots: list[Path] = field(default_factory=list)
    texture_source: str = ""
    facts: provenance.CategoryFacts | None = None


@dataclass
class SweepReport:
    """The files written, the categories' records, and the lines saying what produced the figures."""

    sweep_id: str
    files: leaderboard.ReportFiles
    categories: list[CategoryReport]
    provenance: list[str] = field(default_factory=list)


def _order(category: str) -> tuple[int, str]:
    cats = paper_categories()
    return (cats.index(category) if category in cats else len(cats), category)


def _resources(experiment_path: str, sweep_id: str) -> tuple[float, float]:
    """(CPUs, GPUs) per trial from the sweep manifest; (nan, nan) when it cannot be read."""
    try:
        storage_root = experiment_path.rstrip("/").rsplit("/", 2)[0]
        recorded = read_manifest(storage_root, sweep_id)
    except Exception as exc:  # the report goes on without resources (storage gone, bucket unreachable)
        log.warning("sweep %s: cannot read the manifest near %s (%s)", sweep_id, experiment_path, exc)
        return math.nan, math.nan
    if recorded is None:
        return math.nan, math.nan
    spec = recorded[0]
    return float(spec.resources.cpu), float(spec.resources.gpu)


def _space_fields(space_name: str) -> list[str] | None:
    try:
        return load_space(space_name).fields()
    except Exception as exc:  # a custom space file may not exist on this machine
        log.info("search space %r not readable here (%s): showing the params that vary", space_name, exc)
        return None


def _trial_records(client: MlflowClient, runs: Sequence[TrialRun], metric: str, curve: str,
                   fields: Sequence[str] | None) -> list[sweep_plots.TrialRecord]:
    records = []
    for i, run in enumerate(sorted(runs, key=lambda r: r.start_time)):
        state = _STATE.get(run.outcome or "")
        if state is None:
            continue  # still running or stopped without a result
        params = {k: v for k, v in run.params.items() if fields is None or k in fields}
        value = run.metrics.get(metric)
        history = {m.step: m.value for m in client.get_metric_history(run.run_id, curve)}
        records.append(sweep_plots.TrialRecord(i, params, value, state, history))
    return records


def collect_category(
    client: MlflowClient, experiment_id: str, sweep_id: str, parent: ParentRun, workdir: Path
) -> CategoryReport:
    """One category's leaderboard row (+ its heat-map panels downloaded into ``workdir``)."""
    category = parent.category
    children = registry.trial_runs(client, experiment_id, parent.run_id)
    outcomes = [r.outcome for r in children]
    cpus, gpus = _resources(parent.experiment_path, sweep_id)
    hours = sum(max(0, (r.end_time or r.start_time) - r.start_time) for r in children) / 3_600_000.0

    best_id = parent.best_trial_id or ""
    best_run = next((r for r in children if r.trial_id == best_id), None)
    val: dict[str, float] = {}
    test: dict[str, float] = {}
    model = ""
    heatmaps: list[Path] = []
    if parent.registered_model and parent.registered_version:
        version = RegisteredVersion.from_version(
            client.get_model_version(parent.registered_model, parent.registered_version)
        )
        model = f"{version.name}/{version.version}"
        val, test = dict(version.val_metrics), dict(version.test_metrics)
    if best_run is not None:
        if not val:
            val = {k: v for k, v in best_run.metrics.items() if k.startswith(keys.VAL_PREFIX)}
        if not test:
            test = {k: v for k, v in best_run.metrics.items() if k.startswith(keys.TEST_PREFIX)}
        heatmaps = _download_heatmaps(client, best_run.run_id, workdir / "heatmaps" / category)
    fields = _space_fields(parent.search_space)
    params, defaults = _chosen_config(best_run, children, parent.swept_defaults, fields)
    source = best_run or next(iter(sorted(children, key=lambda r: r.start_time)), None)
    facts = provenance.category_facts(category, parent.dataset, parent.dataset_fingerprint,
                                      source.params if source else {}, len(children))
    exclusion = provenance.paper_exclusion(facts)
    rho, rho_aupro, n, reason = _val_test_fields(parent)
    gain = _sweep_gain(parent, children, best_run, test, hours, facts) if best_run is not None else None
    study = sweep_plots.build_study(
        _trial_records(client, children, parent.tune_metric, parent.selection_metric, fields),
        study_name=f"{sweep_id}-{category}",
    )
    plots = sweep_plots.plot_study(study, workdir / "plots" / category, metric=parent.tune_metric)
    result = leaderboard.CategoryResult(
        category=category,
        val=val,
        test=test,
        params=params,
        trials_run=len(children),
        trials_pruned=outcomes.count("pruned"),
        trials_failed=outcomes.count("failed"),
        cpu_hours=hours * cpus if math.isfinite(cpus) else math.nan,
        gpu_hours=hours * gpus if math.isfinite(gpus) else math.nan,
        best_trial=best_id,
        model=model,
        heatmaps=heatmaps,
        val_test_rho=rho,
        val_test_rho_aupro=rho_aupro,
        val_test_trials=n,
        val_test_reason=reason,
        defaults=defaults,
        compare_with_paper=not exclusion,
        paper_exclusion=exclusion,
        gain=gain,
        plots=plots,
    )
    files = [p.path for p in plots if p.path is not None]
    texture = next((r.params[TEXTURE_SOURCE] for r in (best_run, *children) if r and TEXTURE_SOURCE in r.params), "")
    return CategoryReport(result, parent.run_id, parent.selection_metric, files, texture, facts)


def _sweep_gain(
    parent: ParentRun,
    children: Sequence[TrialRun],
    best_run: TrialRun,
    chosen_test: Mapping[str, float],
    trial_hours: float,
    facts: provenance.CategoryFacts,
) -> sweep_gain.SweepGain:
    """The category's ladder: the baseline from the parent run, the defaults and chosen trials from their runs.

    Validation is each trial's ``tune_metric`` (the best-so-far selection metric that ranked it); test is
    its best checkpoint's figure (the chosen trial's from its run, else from the registered version).
    """
    metric = parent.selection_metric.removeprefix(keys.VAL_PREFIX)
    test_key = keys.TEST_PREFIX + metric
    # The run's metric is the full-precision figure the version's tag was written from.
    chosen = best_run.metrics.get(test_key, chosen_test.get(test_key, math.nan))
    defaults = next((r for r in children if r.trial_id == parent.defaults_trial_id), None)
    defaults_test = math.nan
    if defaults is not None:
        defaults_test = chosen if defaults.trial_id == best_run.trial_id else defaults.metrics.get(test_key, math.nan)
    baseline_val, baseline_test = sweep_gain.baseline_figures(parent.metrics, metric)
    return sweep_gain.SweepGain(
        category=parent.category,
        metric=metric,
        chosen_trial=best_run.trial_id,
        defaults_trial=defaults.trial_id if defaults is not None else None,
        baseline_val=baseline_val,
        baseline_test=baseline_test,
        defaults_val=defaults.metrics.get(parent.tune_metric, math.nan) if defaults is not None else math.nan,
        defaults_test=defaults_test,
        chosen_val=best_run.metrics.get(parent.tune_metric, math.nan),
        chosen_test=chosen,
        trials=len(children),
        trial_hours=trial_hours,
        validation=facts.validation,
    )


def texture_source_note(categories: Sequence[CategoryReport]) -> str:
    """The report's line on the texture source of each category's anomaly synthesis, grouped by source."""
    by_source: dict[str, list[str]] = {}
    for cat in categories:
        by_source.setdefault(cat.texture_source or "not recorded", []).append(cat.result.category)
    parts = [f"{source} ({', '.join(names)})" for source, names in sorted(by_source.items())]
    return (
        f"texture source of the training anomalies ({TEXTURE_SOURCE}; dtd = the paper's, procedural = "
        f"generated textures, a different anomaly distribution): {'; '.join(parts)}"
    )


def _val_test_fields(parent: ParentRun) -> tuple[float, float, int, str]:
    """The leaderboard's ρ fields from the parent run: rho against the selection metric's test
    counterpart, rho against the test AUPRO, the trials rho rests on (-1: not recorded), and why a rho
    is undefined."""
    if not parent.val_test:
        return math.nan, math.nan, -1, "not recorded on the category's parent run (its study has not ended)"
    counterpart = schema.val_test_metrics(parent.selection_metric)[0]
    main = parent.val_test.get(counterpart)
    aupro = parent.val_test.get(schema.VAL_TEST_ALSO)
    reasons = dict.fromkeys(c.reason for c in (main, aupro) if c is not None and c.reason)
    return (
        main.rho if main is not None else math.nan,
        aupro.rho if aupro is not None else math.nan,
        main.n if main is not None else -1,
        "; ".join(reasons),
    )


def _chosen_config(
    best_run: TrialRun | None,
    children: Sequence[TrialRun],
    defaults: Mapping[str, str] | None,
    space_fields: Sequence[str] | None,
) -> tuple[dict[str, object], dict[str, object]]:
    """The winner's value of every swept field, and the default of each field where the value differs.

    The swept fields and their defaults are what the sweep stage recorded on the parent run. A parent
    run written before that has no defaults; its fields are then the search space file's, and without
    that file the params that took more than one value across the category's trials.
    """
    if best_run is None:
        return {}, {}
    if defaults is not None:
        fields: Sequence[str] = list(defaults)
    elif space_fields is not None:
        fields = space_fields
    else:
        fields = list(sweep_plots.infer_distributions(
            [sweep_plots.TrialRecord(i, r.params, None) for i, r in enumerate(children)]
        ))
    chosen = {k: sweep_plots.parse_param(best_run.params[k]) for k in fields if k in best_run.params}
    differs = {
        k: sweep_plots.parse_param(d) for k, d in (defaults or {}).items()
        if k in best_run.params and best_run.params[k] != d
    }
    return chosen, differs


def _download_heatmaps(client: MlflowClient, run_id: str, dst: Path) -> list[Path]:
    try:
        names = [a.path for a in client.list_artifacts(run_id, HEATMAP_DIR)]
    except Exception:  # no panels is not an error
        return []
    if not names:
        return []
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run_id, HEATMAP_DIR, str(dst)))
    return sorted(local.glob("*.png"))


def write_sweep_report(tracking_uri: str, sweep_id: str, out_dir: Path, *, log_to_mlflow: bool = True) -> SweepReport:
    """Write ``leaderboard.{md,csv,html}`` and ``plots/<category>/*`` to ``out_dir``; log them to MLflow.

    Raises:
        RegistrationError: the sweep has no experiment or no category run on this server.
        SchemaError: a run or version lacks a tag its stage writes (named).
        TrackingError: the server is not reachable (named).
    """
    client = registry.tracking_client(tracking_uri)
    experiment_id = registry.sweep_experiment_id(client, sweep_id)
    parents = registry.parent_runs(client, experiment_id, sweep_id)
    if not parents:
        msg = f"sweep {sweep_id!r}: no category runs in its MLflow experiment"
        raise registry.RegistrationError(msg)
    parents.sort(key=lambda p: _order(p.category))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    categories = [collect_category(client, experiment_id, sweep_id, p, out_dir) for p in parents]
    selected_on = ", ".join(sorted({c.selection_metric for c in categories}))
    produced_by = provenance.header_lines([c.facts for c in categories if c.facts is not None])
    notes = [
        *produced_by,
        f"sweep {sweep_id}, MLflow experiment {experiment_id} at {tracking_uri}",
        f"val = best trial on the validation split (held-out train/good + fixed-seed synthetic anomalies), "
        f"selected on {selected_on}; test = that trial's checkpoint on the test split, measured at "
        "registration (or when the study ended, for the val/test ρ) and never used for a choice",
        "CPU/GPU hours = trial run wall time x the trial's resources",
        texture_source_note(categories),
    ]
    files = leaderboard.write_report([c.result for c in categories], out_dir, title=f"MemSeg sweep {sweep_id}",
                                     notes=notes)
    if log_to_mlflow:
        logged_metrics = {p.run_id: p.metrics for p in parents}
        for cat in categories:
            logged = logged_metrics.get(cat.parent_run_id, {})
            for key, value in sorted(cat.result.gain.parent_metrics().items() if cat.result.gain else ()):
                if logged.get(key) != value:  # a rewritten report adds no history to an unchanged figure
                    client.log_metric(cat.parent_run_id, key, value)
            for file in (files.markdown, files.csv, files.html):
                client.log_artifact(cat.parent_run_id, str(file), REPORT_ARTIFACT_DIR)
            for plot in cat.result.plots:
                if plot.path is not None:
                    client.log_artifact(cat.parent_run_id, str(plot.path), PLOTS_ARTIFACT_DIR)
                else:
                    client.log_text(cat.parent_run_id, f"{plot.caption}: {plot.reason}\n",
                                    f"{PLOTS_ARTIFACT_DIR}/{plot.kind}.txt")
    paper = leaderboard.paper_lines(leaderboard.build_table([c.result for c in categories]),
                                    [c.result for c in categories])
    return SweepReport(sweep_id, files, categories, [*produced_by, *paper])


def default_out_dir(sweep_id: str) -> Path:
    return Path("runs") / "reports" / sweep_id
