"""The end-to-end pipeline: sweep -> register -> promote -> report, resumable at every stage (issue 4, item 5).

Each stage asks MLflow (and the sweep's storage) what is already done and does only the rest, so
re-running the same command after a crash, a Ctrl-C or a tracking-server outage finishes the job
without repeating finished work:

* sweep: categories whose parent run is FINISHED with a best trial are skipped; the others run, or
  resume from Tune's experiment state (``run_tracked_sweep(resume=True)``) when the sweep exists;
* register: idempotent (a version is keyed by sweep id + trial id, :mod:`pipelines.registry`);
* promote: decided once per challenger version (``gate.*`` tags, :mod:`pipelines.promotion`);
* report: rewritten every time (:mod:`pipelines.report`).

Which sweep: ``--sweep-id`` if given; otherwise the latest sweep of the same config name under the
storage path (so a bare re-run continues it), or a new one with ``new=True`` or when there is none.

The tracking server is probed before every step; when it does not answer, the pipeline stops with a
:class:`~pipelines.tracking.TrackingError` naming it, and the next run continues where this one
stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from memseg.errors import MemSegError
from pipelines.promotion import PromotionOutcome, PromotionPolicy

log = logging.getLogger(__name__)

STAGES = ("sweep", "register", "promote", "report")
StepHook = Callable[[str, str | None], None]


@dataclass
class PipelineResult:
    """What one pipeline run did (and what it found already done)."""

    sweep_id: str
    tracking_uri: str
    experiment_id: str = ""
    swept: list[str] = field(default_factory=list)
    skipped_sweeps: list[str] = field(default_factory=list)
    registrations: dict[str, Any] = field(default_factory=dict)
    promotions: dict[str, PromotionOutcome] = field(default_factory=dict)
    report: Any = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and self.report is not None


@contextlib.contextmanager
def tracking_guard(uri: str) -> Iterator[None]:
    """Turn an MLflow failure caused by an unreachable server into a TrackingError naming the server."""
    from pipelines.tracking import check_tracking_store

    check_tracking_store(uri)
    try:
        yield
    except MemSegError:
        raise
    except Exception:
        check_tracking_store(uri, timeout_s=5.0)  # raises TrackingError when the server is the cause
        raise


def resolve_tracking_uri(storage_root: str, tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the embedded default: SQLite under the storage."""
    from pipelines.tracking import local_store_uri
    from sweeps.driver import is_uri

    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return local_store_uri(storage_root if not is_uri(storage_root) else "runs")


def finished_categories(uri: str, sweep_id: str, categories: Sequence[str]) -> list[str]:
    """The categories whose study ended (parent run FINISHED) with a best trial."""
    from pipelines import registry

    client = registry.tracking_client(uri)
    try:
        experiment_id = registry.sweep_experiment_id(client, sweep_id)
    except registry.RegistrationError:
        return []
    done = []
    for category in categories:
        parent = registry.parent_run(client, experiment_id, sweep_id, category)
        if parent is not None and parent.info.status == "FINISHED" and parent.data.tags.get("best_trial_id"):
            done.append(category)
    return done


def run_pipeline(
    spec: Any,
    *,
    categories: Sequence[str] | None = None,
    sweep_id: str | None = None,
    new: bool = False,
    tracking_uri: str | None = None,
    policy: PromotionPolicy | None = None,
    report_dir: str | Path | None = None,
    device: str = "auto",
    on_step: StepHook | None = None,
    stream: TextIO | None = None,
) -> PipelineResult:
    """Sweep the categories, register each winner, run the promotion gate, write the report.

    Args:
        spec: the sweep spec (:func:`sweeps.spec.load_sweep_spec`).
        categories: a subset of the spec's categories (default: all of them).
        sweep_id: the sweep to run or continue (default: the latest of this config, else a new one).
        new: start a new sweep even if one of this config exists.
        tracking_uri: the MLflow server (default ``MLFLOW_TRACKING_URI``, else SQLite under the storage).
        policy: the promotion gate's policy.
        report_dir: where the report goes (default ``runs/reports/<sweep_id>``).
        device: where registration and the gate evaluate (``auto``/``cpu``/``cuda``).
        on_step: called as ``on_step(stage, category)`` after every finished step (progress, tests).
        stream: where progress and the summary are printed (default: the current ``sys.stdout``).

    Raises:
        TrackingError: the tracking server is not reachable (the message names it).
    """
    from pipelines import promotion, registry, report
    from pipelines.commands.sweep import run_tracked_sweep
    from sweeps import driver
    from sweeps.spec import unique

    policy = policy or PromotionPolicy()
    stream = stream or sys.stdout
    storage_root = driver.absolute_storage(spec.storage.path)
    uri = resolve_tracking_uri(storage_root, tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the sweep stage (and its Ray workers) read it from here
    # One line per step is the progress display; MLflow's per-download progress bars only add noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    categories = unique(list(categories or spec.categories))
    unknown = sorted(set(categories) - set(spec.categories))
    if unknown:
        from memseg.errors import ConfigError

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
    say = lambda text: print(text, file=stream, flush=True)  # noqa: E731
    say(f"pipeline: sweep {sweep_id} ({'continuing' if exists else 'new'}), categories {', '.join(categories)}\n"
        f"  MLflow {uri}")

    # 1. sweep -------------------------------------------------------------------------------------
    with tracking_guard(uri):
        done = finished_categories(uri, sweep_id, categories) if exists else []
    pending = [c for c in categories if c not in done]
    result.skipped_sweeps = done
    if done:
        say(f"[sweep] finished already, skipped: {', '.join(done)}")
    if pending:
        say(f"[sweep] {'resuming' if exists else 'running'}: {', '.join(pending)}")
        where = {"data.root": spec.data.root, "storage.path": spec.storage.path}
        with tracking_guard(uri):
            run_tracked_sweep(spec, categories=pending, resume=exists, sweep_id=sweep_id, changes=where,
                              stream=stream)
        result.swept = pending
    step("sweep", None)

    # 2. register ------------------------------------------------------------------------------------
    with tracking_guard(uri):
        client = registry.tracking_client(uri)
        result.experiment_id = registry.sweep_experiment_id(client, sweep_id)
    work = Path(storage_root if not driver.is_uri(storage_root) else ".") / sweep_id / "registry"
    for category in categories:
        with tracking_guard(uri):
            try:
                winner = registry.find_winner(uri, sweep_id, category, workdir=work)
                reg = registry.register_winner(uri, winner, device=device)
            except (registry.RegistrationError, MemSegError) as exc:
                if _is_tracking_error(exc):
                    raise
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
    out = Path(report_dir) if report_dir else report.default_out_dir(sweep_id)
    with tracking_guard(uri):
        result.report = report.write_sweep_report(uri, sweep_id, out)
    step("report", None)
    say(format_summary(result))
    return result


def _is_tracking_error(exc: BaseException) -> bool:
    from pipelines.tracking import TrackingError

    return isinstance(exc, TrackingError)


def format_summary(result: PipelineResult) -> str:
    """Best config and metric per category, where the report is and how to open the MLflow UI."""
    from pipelines.tracking import ui_hint

    lines = [f"\npipeline done: sweep {result.sweep_id}"]
    rows = {c.result.category: c for c in (result.report.categories if result.report else [])}
    for category, cat in rows.items():
        r = cat.result
        sel = next((k for k in ("val_pixel_auroc", "val_image_auroc", "val_pixel_aupro") if k in r.val), None)
        best = f"{sel}={r.val[sel]:.4f}" if sel else "no validation figure"
        test = r.test.get("test_image_auroc")
        test_text = f", test image AUROC {test:.4f}" if test is not None else ""
        promo = result.promotions.get(category)
        champion = f", champion v{promo.champion_after}" if promo and promo.champion_after else ""
        lines.append(f"  {category}: {best}{test_text}  trial {r.best_trial}  {r.model}{champion}")
        for key, value in sorted(r.params.items()):
            lines.append(f"      {key} = {value:.4g}" if isinstance(value, float) else f"      {key} = {value}")
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
