"""The end-to-end pipeline: sweep -> register -> promote -> report, resumable at every stage.

Each stage asks MLflow (and the sweep's storage) what is already done and does only the rest, so
re-running the same command after a crash, a Ctrl-C or a tracking-server outage finishes the job
without repeating finished work:

* sweep (:mod:`pipelines.sweep_stage`): categories whose parent run is FINISHED with a best trial
  are skipped; the others run, or resume from Tune's experiment state when the sweep exists;
* register (:mod:`pipelines.registry`): idempotent (a version is keyed by sweep id + trial id);
* promote (:mod:`pipelines.promotion`): decided once per challenger version (``gate.*`` tags);
* report (:mod:`pipelines.report`): rewritten every time.

The stages hand nothing to each other but the tracking URI and the sweep id; everything else is read
back from MLflow through :mod:`pipelines.schema`.

Which sweep: ``sweep_id`` if given; otherwise the latest sweep of the same config name under the
storage path (so a bare re-run continues it), or a new one with ``new=True`` or when there is none.

The tracking server is probed before every step; when it does not answer, the pipeline stops with a
:class:`~pipelines.tracking.TrackingError` naming it, and the next run continues where this one
stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from memseg.errors import ConfigError, MemSegError
from memseg.metrics import keys
from pipelines import promotion, registry, report, sweep_gain, sweep_stage
from pipelines.leaderboard import CategoryResult, format_value
from pipelines.promotion import PromotionOutcome, PromotionPolicy
from pipelines.registry import Registration
from pipelines.report import SweepReport
from pipelines.tracking import TrackingError, check_tracking_store, ui_hint
from sweeps import driver
from sweeps.spec import SweepSpec, unique

StepHook = Callable[[str, str | None], None]


@dataclass
class PipelineResult:
    """What one pipeline run did (and what it found already done)."""

    sweep_id: str
    tracking_uri: str
    experiment_id: str = ""
    swept: list[str] = field(default_factory=list)
    skipped_sweeps: list[str] = field(default_factory=list)
    registrations: dict[str, Registration] = field(default_factory=dict)
    promotions: dict[str, PromotionOutcome] = field(default_factory=dict)
    report: SweepReport | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and self.report is not None


@contextlib.contextmanager
def tracking_guard(uri: str) -> Iterator[None]:
    """Turn an MLflow failure caused by an unreachable server into a TrackingError naming the server."""
    check_tracking_store(uri)
    try:
        yield
    except MemSegError:
        raise
    except Exception:
        check_tracking_store(uri, timeout_s=5.0)  # raises TrackingError when the server is the cause
        raise


def finished_categories(uri: str, sweep_id: str, categories: Sequence[str]) -> list[str]:
    """The categories whose study ended (parent run FINISHED) with a best trial."""
    return category_states(uri, sweep_id, categories)[0]


def category_states(uri: str, sweep_id: str, categories: Sequence[str]) -> tuple[list[str], list[str]]:
    """(finished, failed): the categories whose study ended with a best trial, and those whose parent run FAILED."""
    client = registry.tracking_client(uri)
    try:
        experiment_id = registry.sweep_experiment_id(client, sweep_id)
    except registry.RegistrationError:
        return [], []
    done, failed = [], []
    for category in categories:
        parent = registry.parent_run(client, experiment_id, sweep_id, category)
        if parent is not None and parent.finished:
            done.append(category)
        elif parent is not None and parent.status == "FAILED":
            failed.append(category)
    return done, failed


def run_pipeline(
    spec: SweepSpec,
    *,
    tracking_uri: str,
    categories: Sequence[str] | None = None,
    sweep_id: str | None = None,
    new: bool = False,
    policy: PromotionPolicy | None = None,
    report_dir: str | Path | None = None,
    device: str = "auto",
    on_step: StepHook | None = None,
    stream: TextIO | None = None,
    retry_failed: bool = False,
) -> PipelineResult:
    """Sweep the categories, register each winner, run the promotion gate, write the report.

    Args:
        spec: the sweep spec (:func:`sweeps.spec.load_sweep_spec`).
        tracking_uri: the MLflow store (:func:`pipelines.tracking.resolve_tracking_uri` picks one).
        categories: a subset of the spec's categories (default: all of them).
        sweep_id: the sweep to run or continue (default: the latest of this config, else a new one).
        new: start a new sweep even if one of this config exists.
        policy: the promotion gate's policy (default: :class:`PromotionPolicy`'s).
        report_dir: where the report goes (default ``runs/reports/<sweep_id>``).
        device: where registration and the gate evaluate (``auto``/``cpu``/``cuda``).
        on_step: called as ``on_step(stage, category)`` after every finished step (progress, tests).
        stream: where progress and the summary are printed (default: the current ``sys.stdout``).
        retry_failed: rerun the trials of the continued sweep that failed for good (their cause fixed).

    Raises:
        TrackingError: the tracking server is not reachable (the message names it).
        SweepInterrupted: Ctrl-C during the sweep stage.
    """
    policy = policy or PromotionPolicy()
    out = stream or sys.stdout
    uri = tracking_uri
    storage_root = driver.absolute_storage(spec.storage.path)
    # One line per step is the progress display; MLflow's per-download progress bars only add noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    categories = unique(list(categories or spec.categories))
    unknown = sorted(set(categories) - set(spec.categories))
    if unknown:
        msg = f"--categories: {unknown} not in config {spec.name!r} (its categories: {spec.categories})"
        raise ConfigError(msg)

    exists = False
    if sweep_id is None and not new:
        sweep_id = driver.latest_sweep_id(storage_root, spec.name)
    if sweep_id is None:
        sweep_id = driver.make_sweep_id(spec.name)
    else:
        exists = driver.read_manifest(storage_root, sweep_id) is not None
    result = PipelineResult(sweep_id=sweep_id, tracking_uri=uri)
    step = on_step or (lambda stage, category: None)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"pipeline: sweep {sweep_id} ({'continuing' if exists else 'new'}), categories {', '.join(categories)}\n"
        f"  MLflow {uri}")

    # 1. sweep -------------------------------------------------------------------------------------
    with tracking_guard(uri):
        done, failed = category_states(uri, sweep_id, categories) if exists else ([], [])
    pending = [c for c in categories if c not in done]
    result.skipped_sweeps = done
    if done:
        say(f"[sweep] finished already, skipped: {', '.join(done)}")
    if failed and not retry_failed:
        say(f"[sweep] {', '.join(failed)}: this sweep failed there before; its failed trials are not rerun.\n"
            f"  {sweep_stage.retry_hint(spec.name, sweep_id, failed, command='pipeline')}")
    if pending:
        say(f"[sweep] {'resuming' if exists else 'running'}: {', '.join(pending)}"
            f"{' (failed trials again)' if retry_failed and exists else ''}")
        generate = spec.data.generate.model_dump() if spec.data.generate is not None else None
        where = {"data.root": spec.data.root, "data.generate": generate, "storage.path": spec.storage.path}
        with tracking_guard(uri):
            swept = sweep_stage.run_tracked_sweep(
                spec, tracking_uri=uri, categories=pending, resume=exists, sweep_id=sweep_id, changes=where,
                stream=out, summary_params=False, retry_failed=retry_failed and exists)
        result.swept = pending
        if swept.untracked:  # registering from an incomplete record could pick a winner Tune did not pick
            raise TrackingError(sweep_stage.untracked_report(swept.untracked, uri, spec.name, sweep_id))
        no_result = [c for c, r in swept.result.categories.items() if r.best is None]
        if no_result:
            say(sweep_stage.retry_hint(spec.name, sweep_id, no_result, command="pipeline"))
    step("sweep", None)

    # 2. register ------------------------------------------------------------------------------------
    with tracking_guard(uri):
        client = registry.tracking_client(uri)
        result.experiment_id = registry.sweep_experiment_id(client, sweep_id)
    work = Path(storage_root if not driver.is_uri(storage_root) else ".") / sweep_id / "registry"
    for category in categories:
        with tracking_guard(uri):
            try:
                reg = registry.register_category(uri, sweep_id, category, workdir=work, device=device)
            except TrackingError:
                raise
            except MemSegError as exc:
                result.errors[category] = str(exc)
                say(f"[register] {category}: FAILED: {exc}")
                continue
        result.registrations[category] = reg
        say(f"[register] {category}: {reg.name} v{reg.version} "
            f"({'new' if reg.created else 'already registered'}), alias challenger")
        step("register", category)

    # 3. promote ---------------------------------------------------------------------------------------
    for category, reg in result.registrations.items():
        with tracking_guard(uri):
            outcome = promotion.promote(uri, reg.name, policy, device=device)
        result.promotions[category] = outcome
        say("[promote] " + outcome.summary().replace("\n", "\n          "))
        step("promote", category)

    # 4. report -----------------------------------------------------------------------------------------
    report_out = Path(report_dir) if report_dir else report.default_out_dir(sweep_id)
    with tracking_guard(uri):
        result.report = report.write_sweep_report(uri, sweep_id, report_out)
    step("report", None)
    say(format_summary(result))
    return result


def format_summary(result: PipelineResult) -> str:
    """The end of the run: what produced the figures, one table of the categories (the authors'-defaults
    trial beside the chosen one, on validation and test, the registered version and the champion), the
    chosen values that differ from the defaults, the overall sweep gain, then where to look."""
    lines = [f"\npipeline done: sweep {result.sweep_id}"]
    cats = result.report.categories if result.report else []
    if result.report is not None:
        lines += [f"  {line}" for line in result.report.provenance]
    if cats:
        selection = sorted({c.selection_metric for c in cats})
        lines.append(f"  selected on {', '.join(selection)}; figures in %; defaults = the trial that ran the "
                     "authors' defaults, chosen = the sweep's pick")
        rows = [_SUMMARY_HEADER, *(_summary_row(c.result, c.selection_metric, result) for c in cats)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_SUMMARY_HEADER))]
        for row in rows:
            cells = [cell.ljust(w) if i in (0, 6, 7, 8) else cell.rjust(w) for i, (cell, w) in
                     enumerate(zip(row, widths, strict=True))]
            lines.append("  " + "  ".join(cells).rstrip())
        for cat in cats:
            r = cat.result
            changed = [f"{k} {format_value(v)} (default {format_value(r.defaults[k])})"
                       for k, v in sorted(r.params.items()) if k in r.defaults]
            if changed:  # the full configuration is in the report
                lines.append(f"  chosen vs default, {r.category}: {', '.join(changed)}")
        gains = [c.result.gain for c in cats if c.result.gain is not None]
        lines += [f"  {line}" for line in sweep_gain.summary_lines(gains)[:1]]
    for category, error in result.errors.items():
        lines.append(f"  {category}: FAILED: {error}")
    if result.report is not None:
        lines.append(f"report: {result.report.files.html.resolve()}  (also .md and .csv, and in MLflow)")
    lines.append(f"MLflow UI: {ui_hint(result.tracking_uri, result.experiment_id)}")
    champions = [p.name for p in result.promotions.values() if p.champion_after]
    if champions:
        lines.append(f"serve a champion: MLFLOW_TRACKING_URI={result.tracking_uri} mlflow models serve "
                     f"-m models:/{champions[0]}@champion --env-manager local -p 5001")
    return "\n".join(lines)


_SUMMARY_HEADER = ("category", "val defaults", "val chosen", "test defaults", "test chosen", "rho",
                   "chosen trial", "model", "champion")


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}" if value is not None and math.isfinite(value) else "-"


def _summary_row(r: CategoryResult, selection: str, result: PipelineResult) -> tuple[str, ...]:
    """One category's row of the closing table (``rho``: how well validation ranked the trials on test)."""
    test_key = keys.TEST_PREFIX + selection.removeprefix(keys.VAL_PREFIX)
    gain = r.gain
    chosen_val = gain.chosen_val if gain is not None else r.val.get(selection)
    chosen_test = gain.chosen_test if gain is not None else r.test.get(test_key)
    promo = result.promotions.get(r.category)
    champion = f"v{promo.champion_after}" if promo and promo.champion_after else "-"
    rho = f"{r.val_test_rho:.2f}" if math.isfinite(r.val_test_rho) else "-"
    return (r.category, _pct(gain.defaults_val if gain else None), _pct(chosen_val),
            _pct(gain.defaults_test if gain else None), _pct(chosen_test), rho, r.best_trial or "-",
            r.model or "-", champion)
