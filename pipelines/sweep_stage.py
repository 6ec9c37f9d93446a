"""The sweep stage: plan, track in MLflow and run a sweep, printing the status table while it runs.

The caller names the tracking store (:func:`pipelines.tracking.resolve_tracking_uri` turns flags and
the environment into one); the Ray workers get it through the job's runtime environment
(:func:`pipelines.tracking.worker_env`). Ctrl-C raises :class:`~pipelines.errors.SweepInterrupted`,
and the sweep continues with ``--resume``. When the studies have ended, the trials of every category
are measured on test for the parent runs' val/test rank correlation: one Ray task per trial, with the
resources of a trial, all submitted at once (:class:`RayTestMeasurement`), so the measuring runs on the
workers that trained them, not in the driver. A category with fewer than 3 scored trials is not
measured; ``budget.measure_trials_on_test: false`` measures none. Then each category's parent run
gets what the report's sweep gain needs (:mod:`pipelines.gain_tracking`): the authors'-defaults trial,
its test figures and the training-free baseline's figures.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import ray

from memseg.training.seeding import set_num_threads
from pipelines import gain_tracking, registry, tracking
from pipelines.errors import SweepInterrupted
from sweeps import driver
from sweeps.dataset import ensure_dataset, preflight_dataset
from sweeps.driver import SweepError, SweepResult
from sweeps.search_space import overrides_from_params
from sweeps.spec import SweepSpec, unique
from sweeps.status import StatusCallback, StatusPrinter, SweepStatus, register_board, unregister_board
from sweeps.trainable import torch_threads

logger = logging.getLogger(__name__)

# Keys of a spec that may change when a sweep resumes: where the data (and whether it is generated) and the
# storage are, not what runs.
WHERE_KEYS = ("data.root", "data.generate", "storage.path")
# The spec switch that turns the trials' test measurement off, named in the parent run's reason tag.
MEASURE_SWITCH = "budget.measure_trials_on_test"
NOT_MEASURED_REASON = f"trials not measured on test ({MEASURE_SWITCH}: false)"


@dataclass(frozen=True)
class TrackedSweep:
    """What the driver returned, and where it was tracked."""

    result: SweepResult
    tracking_uri: str
    experiment_id: str
    untracked: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every category produced a best trial, and MLflow holds all of it."""
        return not self.untracked and all(r.best is not None for r in self.result.categories.values())


def run_tracked_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str,
    categories: Sequence[str] | None = None,
    resume: bool = False,
    sweep_id: str | None = None,
    changes: Mapping[str, object] | None = None,
    stream: TextIO | None = None,
    trainable_factory: driver.TrainableFactory | None = None,
    summary_params: bool = True,
    retry_failed: bool = False,
) -> TrackedSweep:
    """Plan, track and run a sweep; print the status table while it runs and the winners at the end.

    Args:
        spec: the sweep spec.
        tracking_uri: the MLflow store the driver tracks into.
        categories: a subset of the categories (default: the spec's, or the recorded ones on resume).
        resume: continue sweep ``sweep_id`` (default: the latest of this spec) from its storage.
        sweep_id: the sweep's name (default: ``<spec name>-<timestamp>``).
        changes: the dotted changes already applied to ``spec``; on resume only :data:`WHERE_KEYS`
            are applied to the spec that ran (a restored study cannot change its space or budgets).
        stream: where the status table and the summary go (default: the current ``sys.stdout``).
        trainable_factory: what the trials run (default: the real trainable; tests wrap it).
        summary_params: list each winner's swept values in the closing summary (the pipeline prints
            them once, in its own summary, so it passes False).
        retry_failed: with ``resume``, run the errored trials again (after their cause was fixed).

    Raises:
        SweepError: nothing to resume, or a new sweep's id exists already.
        DataCheckError: the data root is missing, or a file a trial reads is missing or does not decode
            (one line each), before Ray starts.
        TrackingError: the tracking server does not answer (named), before any slow work.
        SweepInterrupted: Ctrl-C while the studies ran.
    """
    stream = stream or sys.stdout
    # MLflow prints two lines (a run link and a traces-overview link) for every run closed on a tracking
    # server; the summary gives the runs table's link once instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    storage_root = driver.absolute_storage(spec.storage.path)
    if resume:
        sweep_id = sweep_id or driver.latest_sweep_id(storage_root, spec.name)
        if sweep_id is None:
            raise SweepError(f"--resume: no sweep of config {spec.name!r} under {storage_root}")
        recorded = driver.read_manifest(storage_root, sweep_id)
        if recorded is None:
            raise SweepError(f"--resume: no sweep {sweep_id!r} under {storage_root}")
        where = {k: v for k, v in (changes or {}).items() if k in WHERE_KEYS}
        spec = recorded[0].with_changes(where) if where else recorded[0]
        categories = categories or recorded[1]
        manifest_categories = unique([*recorded[1], *categories])
    else:
        sweep_id = sweep_id or driver.make_sweep_id(spec.name)
        if driver.read_manifest(storage_root, sweep_id) is not None:
            raise SweepError(f"sweep {sweep_id!r} already exists under {storage_root}: pass --resume")
        manifest_categories = unique(categories or spec.categories)
    categories = unique(categories or spec.categories)

    tracking.check_tracking_store(tracking_uri)  # before anything slow: a dead server is the most common mistake

    data_root = Path(spec.data.root).expanduser().resolve()
    if spec.data.generate is not None:
        g = spec.data.generate
        ensure_dataset(data_root, categories, size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                       n_test_defect=g.n_test_defect, seed=g.seed)
    # Before Ray: a missing root or a corrupt image otherwise fails every attempt of every trial.
    preflight_dataset(data_root, categories)
    nodes = driver.connect_ray(tracking.worker_env(tracking_uri), spec.cluster.local_num_cpus)
    tracking.check_store_for_cluster(tracking_uri, nodes)
    if nodes > 1 and not driver.is_uri(storage_root):
        print(f"note: {nodes} nodes share storage {storage_root}: it must be a shared mount (NFS) on every node",
              file=stream)

    plans = driver.plan_sweep(spec, sweep_id, categories)
    driver.write_manifest(spec, sweep_id, manifest_categories)
    artifacts = None
    if tracking.is_local_store(tracking_uri) and not driver.is_uri(storage_root):
        artifacts = (Path(storage_root) / "mlartifacts").as_uri()
    tracker = tracking.SweepTracking(tracking_uri, sweep_id, spec_name=spec.name, description=spec.description,
                                     artifact_location=artifacts)
    # Parent runs and callbacks are made here, in the main thread, before the study threads start.
    callbacks = {
        p.category: [tracker.callback(p), StatusCallback(sweep_id, p.category, p.step_budget)] for p in plans
    }

    board = SweepStatus(sweep_id, plans[0].metric, categories)
    register_board(board)
    print(f"sweep {sweep_id}: {len(plans)} categories x {spec.search.num_samples} trials on {nodes} node(s), "
          f"resources {driver.cluster_resources()}\n  storage {plans[0].storage_path}\n  MLflow  {tracking_uri}",
          file=stream, flush=True)
    try:
        with StatusPrinter(board, spec.cluster.status_interval_s, stream) as printer:
            result = driver.run_sweep(spec, plans, resume=resume, callbacks_for=lambda p: callbacks[p.category],
                                      board=board, trainable_factory=trainable_factory, retry_failed=retry_failed)
            printer.print()
    except KeyboardInterrupt:
        raise SweepInterrupted(spec.name, sweep_id) from None
    finally:
        unregister_board(sweep_id)
    # A resumed sweep compares every trial with Tune's records (the driver that died may have lost writes);
    # a fresh one only the trials whose writes failed.
    untracked = finish_tracking(tracker, spec, plans, result.categories, data_root=str(data_root), full=resume)
    print(format_summary(result, tracking_uri, tracker.experiment_id, params=summary_params), file=stream, flush=True)
    failed = [c for c, r in result.categories.items() if r.best is None]
    if failed and summary_params:  # the pipeline says it in its own words
        print(retry_hint(spec.name, sweep_id, failed, command="sweep"), file=stream, flush=True)
    if untracked:
        print(untracked_report(untracked, tracking_uri, spec.name, sweep_id), file=stream, flush=True)
    return TrackedSweep(result, tracking_uri, tracker.experiment_id, tuple(untracked))


def finish_tracking(
    tracker: tracking.SweepTracking,
    spec: SweepSpec,
    plans: Sequence[driver.CategoryPlan],
    results: Mapping[str, driver.CategoryResult],
    *,
    data_root: str,
    full: bool,
) -> list[str]:
    """Reconcile the trial runs with Tune's records, then close the parent runs; what MLflow still lacks.

    Args:
        full: compare every trial's metric points (``--resume``, ``--sync``); otherwise only those of the
            trials whose writes failed in this process.

    Returns:
        One line per trial or parent run whose record could not be written (empty: MLflow is complete).
    """
    left: list[str] = []
    for plan in plans:
        pending = tracking.pending_trials(tracker.sweep_id, plan.category)
        if not (full or pending):
            continue
        try:
            target = tracker.callback(plan).reconcile_target()
            trials = tracking.trials_from_storage(plan.experiment_path)
            lines = tracking.reconcile_category(tracker.client, target, trials, check_points=None if full else pending)
        except Exception as exc:
            lines = [f"{plan.category}: trial runs not reconciled ({type(exc).__name__}: "
                     f"{driver.last_line(str(exc))[:300]})"]
        if not lines:
            tracking.clear_pending(tracker.sweep_id, plan.category, pending)
        left += lines
    try:
        close_tracked_sweep(tracker, spec, plans, results, data_root=data_root)
    except Exception as exc:  # a server down at the very end: the parents are closed by --sync or --resume
        logger.warning("closing the parent runs failed: %s", exc)
        left.append(f"parent runs of {', '.join(p.category for p in plans)}: not closed "
                    f"({type(exc).__name__}: {driver.last_line(str(exc))[:300]})")
    return left


def untracked_report(untracked: Sequence[str], uri: str, spec_name: str, sweep_id: str) -> str:
    """The closing lines of a sweep whose MLflow record is incomplete: what is missing and how to write it."""
    lines = [f"tracking incomplete: MLflow {uri} lacks what Tune recorded for:", *(f"  {u}" for u in untracked),
             "The trials' results are safe in the sweep storage. Once the server answers, write them with",
             f"  memseg sweep --config {spec_name} --sync --sweep-id {sweep_id}"]
    return "\n".join(lines)


def sync_tracked_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str,
    sweep_id: str | None = None,
    changes: Mapping[str, object] | None = None,
    stream: TextIO | None = None,
) -> TrackedSweep:
    """Write into MLflow whatever a sweep's tracking missed (an outage), from Tune's records; trains nothing.

    Every trial run is compared with its trial's results on storage (missing runs, points, tags and
    statuses written) and the parent runs are closed, as at the end of a sweep. Idempotent.

    Raises:
        SweepError: no such sweep under the storage path.
        TrackingError: the tracking server does not answer (named).
    """
    stream = stream or sys.stdout
    storage_root = driver.absolute_storage(spec.storage.path)
    sweep_id = sweep_id or driver.latest_sweep_id(storage_root, spec.name)
    recorded = driver.read_manifest(storage_root, sweep_id) if sweep_id else None
    if sweep_id is None or recorded is None:
        raise SweepError(f"--sync: no sweep {sweep_id or f'of config {spec.name!r}'} under {storage_root}")
    where = {k: v for k, v in (changes or {}).items() if k in WHERE_KEYS}
    spec = recorded[0].with_changes(where) if where else recorded[0]
    tracking.check_tracking_store(tracking_uri)
    data_root = Path(spec.data.root).expanduser().resolve()
    plans = driver.plan_sweep(spec, sweep_id, recorded[1])
    tracker = tracking.SweepTracking(tracking_uri, sweep_id, spec_name=spec.name, description=spec.description)
    results = {p.category: tracking.category_result_from_storage(p) for p in plans}
    started = time.monotonic()
    untracked = finish_tracking(tracker, spec, plans, results, data_root=str(data_root), full=True)
    result = SweepResult(sweep_id, plans[0].metric if plans else "", plans[0].storage_path if plans else "",
                         results, time.monotonic() - started)
    if untracked:
        print(untracked_report(untracked, tracking_uri, spec.name, sweep_id), file=stream, flush=True)
    else:
        print(f"sweep {sweep_id}: MLflow {tracking_uri} holds every trial's record "
              f"({', '.join(p.category for p in plans)})", file=stream, flush=True)
    return TrackedSweep(result, tracking_uri, tracker.experiment_id, tuple(untracked))


def retry_hint(spec_name: str, sweep_id: str, failed: Sequence[str], *, command: str) -> str:
    """What to do about categories without a result: rerun their failed trials once fixed, or start anew."""
    if command == "sweep":
        retry = f"memseg sweep --config {spec_name} --resume --sweep-id {sweep_id} --retry-failed"
        anew = f"memseg sweep --config {spec_name}"
    else:
        retry = f"memseg pipeline run --config {spec_name} --sweep-id {sweep_id} --retry-failed"
        anew = f"memseg pipeline run --config {spec_name} --new"
    return (f"{', '.join(failed)}: no result. Fix the cause named above, then rerun the failed trials with\n"
            f"  {retry}\nor start a new sweep with\n  {anew}")


def close_tracked_sweep(
    tracker: tracking.SweepTracking,
    spec: SweepSpec,
    plans: Sequence[driver.CategoryPlan],
    results: Mapping[str, driver.CategoryResult],
    *,
    data_root: str,
) -> None:
    """Finalize the categories' parent runs, their trials measured on test as Ray tasks unless the spec says no.

    Ray is still connected here in a sweep; the trials of all the categories go to the cluster at once.
    """
    measure = None
    if spec.budget.measure_trials_on_test:
        measure = RayTestMeasurement.for_spec(spec, tracker.uri, data_root=data_root)
    if measure is not None:
        tracking.close_sweep(tracker, plans, results, test_figures=measure)
    else:
        tracking.close_sweep(tracker, plans, results, not_measured=NOT_MEASURED_REASON)
    # The report's sweep gain: the defaults trial, its test figures and the training-free baseline.
    gain_tracking.record_gain_inputs(
        tracker.client, tracker.experiment_id,
        [(plan, results.get(plan.category), tracker.parent_run_id(plan)) for plan in plans], test_figures=measure,
        threads=torch_threads(spec.resources.cpu),
    )


def trial_test_figures(
    experiment_path: str, trial_id: str, *, data_root: str | None = None, device: str = "auto"
) -> dict[str, float]:
    """The ``test_*`` figures of a trial's best checkpoint, measured the way registration measures the winner.

    Args:
        experiment_path: the category's Tune experiment folder (local path or bucket URI).
        trial_id: the trial.
        data_root: the dataset on this machine (None = the root stored in the checkpoint).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.

    Raises:
        RegistrationError: the trial has no ``best_model.pt`` (the folder searched is named).
    """
    with tempfile.TemporaryDirectory(prefix="memseg-trial-test-") as tmp:
        checkpoint = registry.locate_checkpoint(experiment_path, trial_id, Path(tmp))
        return registry.evaluate_on_test(checkpoint, data_root=data_root, device=device, n_panels=0).metrics


@ray.remote
def _trial_test_task(experiment_path: str, trial_id: str, data_root: str, cpus: float, gpu: bool) -> dict[str, float]:
    """:func:`trial_test_figures` on a Ray worker holding a trial's resources (threads and device as a trial's)."""
    set_num_threads(torch_threads(cpus))
    return trial_test_figures(experiment_path, trial_id, data_root=data_root, device="cuda" if gpu else "cpu")


@dataclass(frozen=True)
class RayTestMeasurement:
    """Measures trials on test as Ray tasks (a :data:`pipelines.tracking.TrialTestFigures`).

    Every trial handed over in one call is submitted at once, each task with a trial's CPUs and
    GPUs, then all are gathered, so the cluster measures them side by side as it trained them. A
    task reads the checkpoint from Tune storage and the images from ``data_root``: what every trial
    requires of every node already. When the driver is not connected to Ray, it connects the way
    the sweep does (:func:`sweeps.driver.connect_ray`).

    Attributes:
        data_root: the dataset root (absolute, as the trials got it).
        cpu: CPUs per task (``resources.cpu``); torch uses this many threads.
        gpu: GPUs per task (``resources.gpu``); a task with a GPU measures on it, else on the CPU.
        tracking_uri: what the workers get in their environment if this connects to Ray.
        local_num_cpus: CPUs of a local Ray instance started here (``cluster.local_num_cpus``).
    """

    data_root: str
    cpu: float
    gpu: float
    tracking_uri: str
    local_num_cpus: int | None = None

    @classmethod
    def for_spec(cls, spec: SweepSpec, tracking_uri: str, *, data_root: str) -> RayTestMeasurement:
        return cls(data_root=data_root, cpu=spec.resources.cpu, gpu=spec.resources.gpu, tracking_uri=tracking_uri,
                   local_num_cpus=spec.cluster.local_num_cpus)

    def __call__(
        self, trials: Sequence[tracking.TrialToMeasure]
    ) -> dict[tracking.TrialToMeasure, Mapping[str, float] | Exception]:
        if not trials:
            return {}
        driver.connect_ray(tracking.worker_env(self.tracking_uri), self.local_num_cpus)
        task = _trial_test_task.options(num_cpus=self.cpu, num_gpus=self.gpu)
        refs = {t: task.remote(t.experiment_path, t.trial_id, self.data_root, self.cpu, self.gpu > 0) for t in trials}
        logger.info("measuring %d trials on test as Ray tasks (%s CPU, %s GPU each)", len(refs), self.cpu, self.gpu)
        out: dict[tracking.TrialToMeasure, Mapping[str, float] | Exception] = {}
        for trial, ref in refs.items():
            try:
                out[trial] = ray.get(ref)
            except Exception as exc:  # the task's error; tracking logs it and leaves the trial out
                out[trial] = exc
        return out


def format_summary(result: SweepResult, uri: str, experiment_id: str, *, params: bool = True) -> str:
    """The end-of-sweep report: best score, trial (and with ``params`` its swept values) per category, and where
    to look."""
    lines = [f"\nsweep {result.sweep_id} done in {result.wall_time_s / 60:.1f} min; the winner per category "
             f"({result.metric}):"]
    for cat, res in result.categories.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(res.counts().items()))
        if res.best is None:
            lines.append(f"  {cat}: no result ({res.error or 'no trial reported'}) [{counts}]")
            continue
        lines.append(f"  {cat}: {res.best.score:.4f}  trial {res.best.trial_id}  [{counts}]")
        for key, value in sorted(overrides_from_params(res.best.params).items()) if params else ():
            lines.append(f"      {key} = {value}")
        if res.best_config_path:
            lines.append(f"      full config: {res.best_config_path}")
        if res.best.checkpoint_path:
            lines.append(f"      checkpoint: {res.best.checkpoint_path}")
    lines.append(f"MLflow: {tracking.ui_hint(uri, experiment_id)}")
    return "\n".join(lines)
