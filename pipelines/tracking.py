"""MLflow tracking of sweeps, owned by the driver.

Ray's own helpers leave runs RUNNING when ASHA stops a trial and duplicate runs after
``Tuner.restore``. Here the driver owns every run's life cycle through a Tune callback:

* one MLflow experiment per sweep (``memseg-sweep-<sweep_id>``);
* one parent run per (sweep, category), created before the category's Tuner starts;
* one child run per trial (``mlflow.parentRunId``) created when the trial first starts, with the
  resolved training config as params under stable dotted names (``MemSegConfig.flatten()``) and
  tags ``sweep_id``, ``category``, ``trial_id``, ``git_commit``, ``dataset_fingerprint``;
* metrics per evaluation (``step`` = training step), sent in batches (:data:`METRICS_INTERVAL_S`);
  the reported checkpoint's ``heatmaps/`` panels, stacked into one step-indexed image (key
  ``heatmaps``), for evaluations that improved the trial's best: at most one a minute
  (:data:`HEATMAP_INTERVAL_S`) and always the trial's final best, so the run shows the maps of the
  checkpoint it keeps and their evolution without an upload per checkpoint;
* a final status that is always FINISHED (step budget reached, or pruned: stopped early by ASHA or
  the time budget, a normal outcome shown by the run name's `` (pruned)`` suffix and found with
  :data:`~pipelines.schema.PRUNED_FILTER`) or FAILED (errored after its retries) - never RUNNING;
  a run the driver had to close without its trial ending is KILLED;
* MLflow's ``mlflow.user``, ``mlflow.source.name`` and ``mlflow.source.git.commit`` on every run
  (:func:`source_tags`), so "Created by" and "Source" are filled in;
* on the parent run, once its study ended, the chosen trial's params and its score as
  ``best.<val metric>`` (:func:`~pipelines.schema.parent_best_metric`): no row mixes the base config
  with a trial's figures, and no parent series joins the trials' step-indexed charts;
* when the study has ended, each trial's best checkpoint measured on test (``test_*`` on its run;
  trials train without it) and, on the parent run, how well the trials' validation ranking
  predicted their test ranking (:func:`record_val_test`). The measuring is injected
  (:data:`TrialTestFigures`: the sweep stage runs it as Ray tasks), and every trial of every
  category that :func:`close_sweep` finalizes is handed to it in one batch.

Idempotent across ``Tuner.restore``: runs are found by their tags (sweep id + category + trial id;
one search per category and driver) and resumed, never created twice; at the end of a study every
run of the category is reconciled with its trial's final state, and a RUNNING run whose trial Tune
no longer knows is closed.
Every call names its run id explicitly (``MlflowClient``; no global active run across threads).
The tag names are :mod:`pipelines.schema`'s.

Nothing is lost when the server is away: Tune's records on storage are the truth and MLflow a
projection of them. The hooks queue their writes for one writer thread per category (a Tune loop
never waits on MLflow); a failed write marks its trial pending, and :func:`reconcile_category`
writes what is missing from Tune's records at the end of the category, of the sweep, on ``--resume``
and on ``memseg sweep --sync``. docs/architecture.md, "Decisions", has the rules.

The callback holds only plain values and creates its client lazily, because Tune pickles callbacks
into the experiment state; credentials are never pickled (MLflow reads
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` from the environment).
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.fs
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from ray.tune import Callback, Checkpoint
from ray.tune.experiment import Trial

from memseg.config import MemSegConfig
from memseg.errors import MemSegError
from memseg.metrics.rank_correlation import MIN_TRIALS, RankCorrelation
from memseg.visualize import stack_panels
from pipelines import provenance, schema
from pipelines.schema import (
    HEATMAP_IMAGE_KEY,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_CATEGORY,
    TAG_ERROR,
    TAG_EXPERIMENT_PATH,
    TAG_FAILURES,
    TAG_FINGERPRINT,
    TAG_GIT,
    TAG_NODE,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SOURCE_GIT_COMMIT,
    TAG_SOURCE_NAME,
    TAG_SPACE,
    TAG_SWEEP,
    TAG_TRIAL,
    TAG_TRIAL_DIR,
    TAG_TUNE_METRIC,
    TAG_USER,
    ParentRun,
    TrialRun,
    experiment_name,
)
from sweeps.driver import (
    CategoryPlan,
    CategoryResult,
    TrialSummary,
    error_tail,
    is_uri,
    last_line,
    pick_best,
)
from sweeps.status import classify
from sweeps.trainable import trial_config
from sweeps.tune_callback import NODE_KEY

logger = logging.getLogger(__name__)

CREDENTIAL_VARS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)
# Keys Tune adds to every result; they are bookkeeping, not model metrics.
_TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp", "pid",
    "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore",
    "done", "step", "should_checkpoint", "checkpoint_dir_name",
})  # ... and every non-numeric value (node ip, hostname, the node id, which becomes a tag)
# The trial's own output folder is a worker-local path; it is a tag (trial_dir), not a param.
_NOT_PARAMS = frozenset({"train.output_dir"})
_STATUS = {"finished": "FINISHED", schema.OUTCOME_PRUNED: "FINISHED", "failed": "FAILED"}


@dataclass(frozen=True)
class TrialToMeasure:
    """A trial whose best checkpoint is to be measured on test."""

    category: str
    experiment_path: str
    trial_id: str


TrialTestFigures = Callable[[Sequence[TrialToMeasure]], Mapping[TrialToMeasure, Mapping[str, float] | Exception]]
"""Measures trials' best checkpoints on test, all of them at once: the ``test_*`` figures per trial, or
the exception that trial's measurement raised (a trial left out of the answer counts as failed)."""


class TrackingError(MemSegError):
    """The MLflow tracking store is unusable for this sweep (the message names the URI)."""


# --- where to track ------------------------------------------------------------------------------


def local_store_uri(folder: str | Path) -> str:
    """The embedded default: a SQLite file ``mlflow.db`` in ``folder``."""
    path = Path(folder).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None, storage_path: str) -> str:
    """Where to track: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite in the sweep storage.

    The embedded default lives in the storage folder of the sweeps (``runs`` when the storage is a
    bucket URI), so a sweep, its registration and its report find the same store without a flag.
    """
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return local_store_uri("runs" if is_uri(storage_path) else storage_path)


def is_local_store(uri: str) -> bool:
    """True for stores only this machine can read: a file path, ``file:`` or ``sqlite:``."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    return scheme in ("", "file", "sqlite")


def check_tracking_store(uri: str, *, timeout_s: float = 10.0) -> None:
    """Fail fast (instead of MLflow's minutes of retries) when an HTTP tracking server does not answer.

    Raises:
        TrackingError: naming the URI and what went wrong.
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow tracking server {uri} answered {exc.code} on /health") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        msg = f"MLflow tracking server {uri} is not reachable ({reason}); start it or set MLFLOW_TRACKING_URI"
        raise TrackingError(msg) from None


def check_store_for_cluster(uri: str, alive_nodes: int) -> None:
    """Refuse a machine-local store on a multi-node cluster (nobody else could see the runs).

    Raises:
        TrackingError: when ``uri`` is a file/SQLite store and the cluster has more than one node.
    """
    if alive_nodes > 1 and is_local_store(uri):
        msg = (
            f"MLflow store {uri} is local to this machine but the Ray cluster has {alive_nodes} nodes: "
            "set MLFLOW_TRACKING_URI to a tracking server (http://...) that every node can reach"
        )
        raise TrackingError(msg)


def worker_env(uri: str) -> dict[str, str]:
    """What every Ray worker needs to reach the store (goes into ``runtime_env.env_vars``)."""
    env = {"MLFLOW_TRACKING_URI": uri}
    env.update({k: os.environ[k] for k in CREDENTIAL_VARS if os.environ.get(k)})
    return env


def git_commit(repo: str | Path | None = None) -> str:
    """The commit of the code that runs (``MEMSEG_GIT_COMMIT`` wins, for images built without .git)."""
    if os.environ.get("MEMSEG_GIT_COMMIT"):
        return os.environ["MEMSEG_GIT_COMMIT"]
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at the sweep's runs table: a link for a server, the ``mlflow ui`` command for a local store."""
    route = schema.runs_view_fragment(experiment_id)
    if uri.lower().startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#{route}"
    return f"mlflow ui --backend-store-uri {uri}   # then open http://127.0.0.1:5000/#{route}"


def source_tags(commit: str) -> dict[str, str]:
    """MLflow's "Created by" / "Source" tags of a run the pipeline creates (the commit only when known)."""
    tags = {TAG_SOURCE_NAME: Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "memseg"}
    try:
        tags[TAG_USER] = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry): MLflow leaves it empty too
        pass
    if commit and commit != "unknown":
        tags[TAG_SOURCE_GIT_COMMIT] = commit
    return tags


def _tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def find_runs(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> list[Run]:
    """Runs of the experiment carrying all ``tags`` (every page)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=_tag_filter(tags), max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the sweep-level bookkeeping (main thread) ---------------------------------------------------


class SweepTracking:
    """Experiment and parent runs of one sweep; hands out one Tune callback per category."""

    def __init__(
        self,
        uri: str,
        sweep_id: str,
        *,
        spec_name: str,
        description: str = "",
        artifact_location: str | None = None,
        commit: str | None = None,
    ) -> None:
        self.uri = uri
        self.sweep_id = sweep_id
        self.spec_name = spec_name
        self.commit = commit or git_commit()
        self.client = MlflowClient(tracking_uri=uri)
        name = experiment_name(sweep_id)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                name, artifact_location=artifact_location,
                tags={TAG_SWEEP: sweep_id, schema.TAG_SPEC: spec_name, schema.TAG_NOTE: description,
                      schema.TAG_EXPERIMENT_KIND: schema.EXPERIMENT_KIND_TRAINING},
            )
        else:
            self.experiment_id = exp.experiment_id
            if schema.TAG_EXPERIMENT_KIND not in exp.tags:  # made before the tag existed
                self.client.set_experiment_tag(
                    self.experiment_id, schema.TAG_EXPERIMENT_KIND, schema.EXPERIMENT_KIND_TRAINING)
        self._parents: dict[str, str] = {}
        self._callbacks: list[MlflowTrialCallback] = []

    def parent_run_id(self, plan: CategoryPlan) -> str:
        """The (sweep, category) parent run: found by tags, created once, set RUNNING."""
        if plan.category in self._parents:
            return self._parents[plan.category]
        tags = {TAG_SWEEP: self.sweep_id, TAG_CATEGORY: plan.category, TAG_ROLE: ROLE_PARENT}
        found = find_runs(self.client, self.experiment_id, tags)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"{plan.category}",
                tags={
                    **tags, TAG_GIT: self.commit, TAG_FINGERPRINT: plan.dataset_fingerprint,
                    TAG_SPACE: plan.space.space_name, TAG_TUNE_METRIC: plan.metric,
                    TAG_EXPERIMENT_PATH: plan.experiment_path, **provenance.parent_tags(plan),
                    **source_tags(self.commit),
                },
            )
            run_id = run.info.run_id
        self._parents[plan.category] = run_id
        return run_id

    def callback(self, plan: CategoryPlan) -> MlflowTrialCallback:
        """The Tune callback that tracks one category's trials under its parent run."""
        callback = MlflowTrialCallback(
            tracking_uri=self.uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id(plan),
            sweep_id=self.sweep_id,
            category=plan.category,
            base_config=plan.base_config.model_dump(),
            step_budget=plan.step_budget,
            metric=plan.metric,
            tags={TAG_GIT: self.commit, TAG_FINGERPRINT: plan.dataset_fingerprint, TAG_SPACE: plan.space.space_name,
                  **source_tags(self.commit)},
        )
        self._callbacks.append(callback)
        return callback

    def finalize(
        self,
        plan: CategoryPlan,
        result: CategoryResult | None,
        *,
        test_figures: TrialTestFigures | None = None,
        not_measured: str | None = None,
    ) -> None:
        """Close the category's parent run (and any child still RUNNING) after its study ended.

        ``result`` is the driver's ``CategoryResult`` (None when the driver has none for the
        category): the best trial goes to the parent as tags and a metric; a category whose study
        crashed ends FAILED. With ``test_figures``, the trials are measured on test and the
        parent gets how well validation predicts test across them (:func:`record_val_test`);
        without it, ``not_measured`` (when given) is recorded as the reason there is no rho.
        """
        self.finalize_all([(plan, result)], test_figures=test_figures, not_measured=not_measured)

    def finalize_all(
        self,
        categories: Sequence[tuple[CategoryPlan, CategoryResult | None]],
        *,
        test_figures: TrialTestFigures | None = None,
        not_measured: str | None = None,
    ) -> None:
        """:meth:`finalize` for several categories, their trials measured on test in one batch.

        The parents stay RUNNING until their val/test figures are written, so a driver killed while
        the trials are measured leaves them for the next finalize (a resumed sweep) to complete.
        """
        for callback in self._callbacks:  # writes still queued land before the parents are closed
            callback.flush()
        parents = [(self._close_children(plan, result), result) for plan, result in categories]
        if test_figures is not None:
            pending = [val_test_pending(self.client, self.experiment_id, parent) for parent, _ in parents]
            figures = measure_trials(test_figures, [t for p in pending for t in p.to_measure])
            for p in pending:
                write_val_test(self.client, p, figures)
        elif not_measured is not None:
            for parent, _ in parents:
                record_not_measured(self.client, self.experiment_id, parent, not_measured)
        for parent, result in parents:
            error = result.error if result is not None else None
            self.client.set_terminated(parent, status="FAILED" if error else "FINISHED")

    def _close_children(self, plan: CategoryPlan, result: CategoryResult | None) -> str:
        """Close the category's children still RUNNING and write its best trial; the parent's run id."""
        parent = self.parent_run_id(plan)
        children = find_runs(self.client, self.experiment_id, {TAG_PARENT: parent})
        for run in children:
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, TAG_OUTCOME, "stopped")
                self.client.set_terminated(run.info.run_id, status="KILLED")
        best = result.best if result is not None else None
        error = result.error if result is not None else None
        if best is not None:
            self.client.set_tag(parent, TAG_BEST_TRIAL, best.trial_id)
            best_run = [r for r in children if r.data.tags.get(TAG_TRIAL) == best.trial_id]
            if best_run:
                self.client.set_tag(parent, TAG_BEST_RUN, best_run[0].info.run_id)
                self._copy_params(parent, best_run[0])
            if best.score is not None and math.isfinite(best.score):
                self.client.log_metric(parent, schema.parent_best_metric(plan.metric), best.score)
        if error:
            detail = result.error_detail if result is not None else None
            self.client.set_tag(parent, TAG_ERROR, f"{error}\n\n{detail}" if detail else str(error))
        elif TAG_ERROR in self.client.get_run(parent).data.tags:  # a failure fixed by a retry
            self.client.delete_tag(parent, TAG_ERROR)
        return parent


    def _copy_params(self, parent: str, best_run: Run) -> None:
        """The chosen trial's params on the parent run (params are write-once: a parent that has others,
        from a sweep resumed after its winner changed or from before this rule, keeps them, with a warning)."""
        have = self.client.get_run(parent).data.params
        want = best_run.data.params
        if not have:
            _log_params(self.client, parent, want)
        elif have != want:
            logger.warning("parent run %s keeps its params; the chosen trial's are on run %s",
                           parent, best_run.info.run_id)


# --- the per-category Tune callback (runs in the driver, in the category's Tuner thread) -----------


WRITE_QUEUE_SIZE = 10_000
"""Writes a category's callback may hold back while MLflow is slow; beyond it a write is dropped and its trial
marked pending (reconciliation writes it from Tune's records)."""
OUTAGE_PAUSE_S = 30.0
"""After a failed write the writer skips writes (marking their trials pending) for this long, so an outage costs
one retry budget per pause, not one per write."""
DRAIN_TIMEOUT_S = 600.0
"""How long the end of a study waits for the writes still queued (a write in flight may take MLflow's retry budget)."""
METRICS_INTERVAL_S = 5.0
"""A trial's metric points are held this long and then sent in one request (each request costs the driver ~3 ms
of CPU in MLflow's client, whatever it carries); a trial's end sends what is held at once."""
HEATMAP_INTERVAL_S = 60.0
"""At most one heat-map picture per trial in this interval (counted from the trial's start); an improvement in
between replaces the held picture, and the picture of the trial's final best is always sent when it ends."""
TICK_S = 1.0
"""How often an idle writer looks for held writes that are due."""

Write = Callable[[], None]

_PENDING: dict[str, set[str]] = {}
_PENDING_LOCK = threading.Lock()


def _pending_key(sweep_id: str, category: str) -> str:
    return f"{sweep_id}/{category}"


def mark_pending(sweep_id: str, category: str, trial_id: str) -> None:
    """Record that a trial's MLflow record may lack something (a write failed or was skipped)."""
    with _PENDING_LOCK:
        _PENDING.setdefault(_pending_key(sweep_id, category), set()).add(trial_id)


def pending_trials(sweep_id: str, category: str) -> set[str]:
    """The trials of a category whose MLflow record may be incomplete (in this driver process)."""
    with _PENDING_LOCK:
        return set(_PENDING.get(_pending_key(sweep_id, category), set()))


def clear_pending(sweep_id: str, category: str, trial_ids: Sequence[str] | set[str]) -> None:
    with _PENDING_LOCK:
        _PENDING.get(_pending_key(sweep_id, category), set()).difference_update(trial_ids)


class _Writer:
    """A bounded queue of one category's MLflow writes, drained by one thread, so no Tune hook waits on MLflow.

    Besides the queued writes the thread runs the held writes that have become due (``due(everything)``:
    batched metric points, heat-map pictures), after each write, once a tick when idle, and all of them on
    a flush or at the end. A write that fails marks its trial pending and pauses the writer
    (:data:`OUTAGE_PAUSE_S`): writes meanwhile are skipped, their trials marked pending. Reconciliation then
    writes what is missing from Tune's own records (:func:`reconcile_category`).
    """

    def __init__(self, sweep_id: str, category: str, uri: str,
                 due: Callable[[bool], list[tuple[str, Write]]]) -> None:
        self.sweep_id = sweep_id
        self.category = category
        self.uri = uri
        self.due = due
        self.queue: queue.Queue[tuple[str, Write] | threading.Event | None] = queue.Queue(WRITE_QUEUE_SIZE)
        self.paused_until = 0.0
        self.thread = threading.Thread(target=self._loop, name=f"mlflow-{category}", daemon=True)
        self.thread.start()

    def submit(self, trial_id: str, write: Write) -> None:
        try:
            self.queue.put_nowait((trial_id, write))
        except queue.Full:
            mark_pending(self.sweep_id, self.category, trial_id)

    def flush(self, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until the writes queued or held so far are done (or skipped); False when that took longer than
        ``timeout_s``."""
        done = threading.Event()
        try:
            self.queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait for the queued and held writes and stop the thread; False when it did not finish in time."""
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            return False
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def _loop(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=TICK_S)
            except queue.Empty:
                self._run_due(everything=False)
                continue
            if item is None:
                self._run_due(everything=True)
                return
            if isinstance(item, threading.Event):
                self._run_due(everything=True)
                item.set()
                continue
            self._run(*item)
            self._run_due(everything=False)

    def _run_due(self, *, everything: bool) -> None:
        try:
            due = self.due(everything)
        except Exception:  # a bug here must not stop the thread that every later write needs
            logger.exception("%s: cannot collect the held MLflow writes", self.category)
            return
        for trial_id, write in due:
            self._run(trial_id, write)

    def _run(self, trial_id: str, write: Write) -> None:
        if time.monotonic() < self.paused_until:
            mark_pending(self.sweep_id, self.category, trial_id)
            return
        try:
            write()
        except Exception as exc:
            mark_pending(self.sweep_id, self.category, trial_id)
            self.paused_until = time.monotonic() + OUTAGE_PAUSE_S
            # One line, no traceback: reconciliation writes it later, and the end of the sweep names what is left.
            logger.warning("MLflow tracking at %s failed (%s, trial %s): %s; writes paused %.0f s, the trial's "
                           "record is reconciled from Tune's results later", self.uri, self.category, trial_id,
                           _short(exc), OUTAGE_PAUSE_S)


def _short(exc: BaseException) -> str:
    text = last_line(str(exc)) if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def trial_run_name(category: str, trial_id: str) -> str:
    """The name of a trial's run (a pruned trial's gets :data:`~pipelines.schema.RUN_NAME_PRUNED_SUFFIX`)."""
    return f"{category}-{trial_id}"


@dataclass
class _KnownRun:
    """What the callback knows of a trial's run without asking MLflow again."""

    run_id: str
    status: str
    outcome: str | None
    has_params: bool


@dataclass
class _Points:
    """A trial's metric points and tags held for one batch."""

    trial: Trial
    since: float
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass
class _Picture:
    """A trial's latest improvement not yet pictured: its checkpoint's heat-map PNG files, read when held."""

    trial: Trial
    files: list[bytes]
    step: int


class MlflowTrialCallback(Callback):
    """One MLflow child run per trial; see the module docstring for the life cycle.

    The Tune hooks only queue writes. Everything below the hooks runs in the writer thread, which alone
    touches the run cache and the held points and pictures; the hooks themselves keep only what they
    need to decide what to queue (the last node seen, the best value pictured).
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep_id: str,
        category: str,
        base_config: Mapping[str, Any],
        step_budget: int,
        metric: str,
        tags: Mapping[str, str],
        metrics_interval_s: float = METRICS_INTERVAL_S,
        heatmap_interval_s: float = HEATMAP_INTERVAL_S,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_id = sweep_id
        self.category = category
        self.base_config = dict(base_config)
        self.step_budget = step_budget
        self.metric = metric
        self.tags = dict(tags)
        self.metrics_interval_s = metrics_interval_s
        self.heatmap_interval_s = heatmap_interval_s
        self._reset()

    def _reset(self) -> None:
        """The state that lives only in this driver process (rebuilt from MLflow after a restore)."""
        self._client_obj: MlflowClient | None = None
        self._writer_obj: _Writer | None = None
        self._known_runs: dict[str, _KnownRun] | None = None
        self._nodes: dict[str, str] = {}
        self._best_shown: dict[str, float] = {}
        self._points: dict[str, _Points] = {}
        self._pictures: dict[str, _Picture] = {}
        self._pictured_at: dict[str, float] = {}

    def __getstate__(self) -> dict[str, object]:
        keep = ("tracking_uri", "experiment_id", "parent_run_id", "sweep_id", "category", "base_config",
                "step_budget", "metric", "tags", "metrics_interval_s", "heatmap_interval_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def _writer(self) -> _Writer:
        if self._writer_obj is None:
            self._writer_obj = _Writer(self.sweep_id, self.category, self.tracking_uri, self._due)
        return self._writer_obj

    def _submit(self, trial: Trial, write: Write) -> None:
        self._writer.submit(trial.trial_id, write)

    def flush(self, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait for the MLflow writes queued or held so far; False when they took longer than ``timeout_s``."""
        return self._writer_obj.flush(timeout_s) if self._writer_obj is not None else True

    @property
    def _client(self) -> MlflowClient:
        if self._client_obj is None:
            self._client_obj = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client_obj

    # run lookup (writer thread) ------------------------------------------------------------------

    def _known(self) -> dict[str, _KnownRun]:
        """The category's trial runs, read with one search per driver (then kept up to date here)."""
        if self._known_runs is None:
            tags = {TAG_SWEEP: self.sweep_id, TAG_CATEGORY: self.category, TAG_ROLE: ROLE_TRIAL}
            known: dict[str, _KnownRun] = {}
            for run in sorted(find_runs(self._client, self.experiment_id, tags), key=lambda r: r.info.start_time):
                trial_id = run.data.tags.get(TAG_TRIAL)
                if not trial_id:
                    continue
                if trial_id in known:
                    logger.warning("several MLflow runs carry trial %s; using the oldest", trial_id)
                    continue
                known[trial_id] = _KnownRun(run.info.run_id, run.info.status, run.data.tags.get(TAG_OUTCOME),
                                            bool(run.data.params))
            self._known_runs = known
        return self._known_runs

    def run_for(self, trial: Trial) -> str:
        """The trial's child run: found by tags (after a restore or a retry) or created once."""
        known = self._known().get(trial.trial_id)
        if known is not None:
            return known.run_id
        run = self._client.create_run(
            self.experiment_id,
            run_name=trial_run_name(self.category, trial.trial_id),
            tags={
                TAG_SWEEP: self.sweep_id, TAG_CATEGORY: self.category, TAG_TRIAL: trial.trial_id, **self.tags,
                TAG_PARENT: self.parent_run_id, TAG_ROLE: ROLE_TRIAL,
                TAG_TRIAL_DIR: str(getattr(trial, "path", "") or ""),
            },
        )
        run_id = str(run.info.run_id)
        self._known()[trial.trial_id] = _KnownRun(run_id, "RUNNING", None, has_params=False)
        self._log_trial_params(trial)
        return run_id

    def _log_trial_params(self, trial: Trial) -> None:
        known = self._known()[trial.trial_id]
        cfg = trial_config(MemSegConfig.model_validate(self.base_config), trial.config)
        _log_params(self._client, known.run_id, _params_of(cfg))
        known.has_params = True

    # Tune hooks: each queues its writes (values captured now: Tune changes the trial afterwards) ------

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit(trial, functools.partial(self._start, trial))

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        step = result.get("step")
        if step is None:
            return
        metrics = result_metrics(result, _now_ms())
        node = result.get(NODE_KEY)
        tags = {TAG_NODE: str(node)} if node and self._nodes.get(trial.trial_id) != node else {}
        if node:
            self._nodes[trial.trial_id] = node
        if metrics or tags:
            self._submit(trial, functools.partial(self._hold_points, trial, metrics, tags))

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Checkpoint, **info: Any
    ) -> None:
        result = trial.last_result or {}
        if not self._improved(trial.trial_id, result):
            return
        step = result.get("step")
        self._submit(trial, functools.partial(self._hold_picture, trial, checkpoint, int(step or 0)))

    def _improved(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Whether this result's evaluation is a new best of its trial (the trainer's rule: strictly
        better; a tie keeps the earlier). After a driver restart the first checkpoint counts as new."""
        # self.metric is Tune's ``best_<selection metric>`` (sweeps.driver.tune_metric).
        value, best = result.get(self.metric.removeprefix("best_")), result.get(self.metric)
        if not isinstance(value, (int, float)) or not isinstance(best, (int, float)) or value != best:
            return False  # NaN never equals anything
        if best <= self._best_shown.get(trial_id, -math.inf):
            return False
        self._best_shown[trial_id] = float(best)
        return True

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        tags = {TAG_FAILURES: str(trial.num_failures), TAG_ERROR: _error_text(trial)}
        self._submit(trial, functools.partial(self._hold_points, trial, [], tags))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        tags = {TAG_FAILURES: str(trial.num_failures), TAG_ERROR: _error_text(trial)}
        self._submit(trial, functools.partial(self._close, trial, "failed", tags))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        outcome = classify("TERMINATED", (trial.last_result or {}).get("step"), self.step_budget)
        self._submit(trial, functools.partial(self._close, trial, outcome, {}))

    # the writes (writer thread) ------------------------------------------------------------------

    def _start(self, trial: Trial) -> None:
        self._pictured_at[trial.trial_id] = time.monotonic()
        known = self._known().get(trial.trial_id)
        if known is None:
            self.run_for(trial)
            return
        if known.status != "RUNNING":  # a resumed trial's run is live again
            self._client.update_run(known.run_id, status="RUNNING")
            known.status = "RUNNING"
        if not known.has_params:  # the driver died between creating the run and logging its params
            self._log_trial_params(trial)

    def _hold_points(self, trial: Trial, metrics: list[Metric], tags: Mapping[str, str]) -> None:
        held = self._points.setdefault(trial.trial_id, _Points(trial, time.monotonic()))
        held.metrics.extend(metrics)
        held.tags.update(tags)

    def _hold_picture(self, trial: Trial, checkpoint: Checkpoint, step: int) -> None:
        # Read now: a newer checkpoint may replace this one (deleted) before the picture is due.
        files = read_heatmap_files(checkpoint)
        if files:
            self._pictures[trial.trial_id] = _Picture(trial, files, step)

    def _due(self, everything: bool) -> list[tuple[str, Write]]:
        """The held writes to run now: all of them, or those whose interval has passed."""
        now = time.monotonic()
        due: list[tuple[str, Write]] = []
        for trial_id, picture in list(self._pictures.items()):
            if everything or now - self._pictured_at.get(trial_id, -math.inf) >= self.heatmap_interval_s:
                due.append((trial_id, functools.partial(self._write_picture, trial_id, picture)))
        for trial_id, points in list(self._points.items()):
            if everything or now - points.since >= self.metrics_interval_s:
                due.append((trial_id, functools.partial(self._write_points, trial_id, points)))
        return due

    def _write_points(self, trial_id: str, points: _Points) -> None:
        if self._points.get(trial_id) is points:
            del self._points[trial_id]  # taken out first: a failed write is reconciled, not retried forever
        _log_batch(self._client, self.run_for(points.trial), points.metrics, points.tags)

    def _write_picture(self, trial_id: str, picture: _Picture) -> None:
        if self._pictures.get(trial_id) is picture:
            del self._pictures[trial_id]
        self._pictured_at[trial_id] = time.monotonic()
        panels = decode_heatmaps(picture.files)
        if panels:
            self._client.log_image(self.run_for(picture.trial), stack_panels(panels), key=HEATMAP_IMAGE_KEY,
                                   step=picture.step)

    def _close(self, trial: Trial, outcome: str, tags: Mapping[str, str]) -> None:
        """The trial's last writes: its held picture (its final best), then its held points, tags and terminal
        status in one closing batch."""
        picture = self._pictures.get(trial.trial_id)
        if picture is not None:
            self._write_picture(trial.trial_id, picture)
        points = self._points.pop(trial.trial_id, None)
        run_id = self.run_for(trial)
        known = self._known()[trial.trial_id]
        if points is None and not tags and known.status == _STATUS[outcome] and known.outcome == outcome:
            return  # closed already (a restored driver told of a trial it had finished)
        close_run(self._client, run_id, outcome, trial_run_name(self.category, trial.trial_id),
                  metrics=points.metrics if points else (), tags={**(points.tags if points else {}), **tags})
        known.status, known.outcome = _STATUS[outcome], outcome

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Wait for the queued writes, then reconcile every run of the category with its trial's record.

        Statuses of every trial, and the metric points of the trials whose writes failed, are written from
        Tune's records (:func:`reconcile_category`); what still fails stays pending for the end of the sweep.
        """
        if not self._writer.drain():
            logger.warning("%s: MLflow writes still queued after %.0f s; reconciled at the end of the sweep",
                           self.category, DRAIN_TIMEOUT_S)
            for trial in trials:
                mark_pending(self.sweep_id, self.category, trial.trial_id)
            return
        self._writer_obj = None
        pending = pending_trials(self.sweep_id, self.category)
        try:
            left = reconcile_category(
                self._client, self.reconcile_target(), trials_from_tune(trials), check_points=pending)
        except Exception as exc:
            logger.warning("%s: MLflow reconciliation at %s failed (%s); retried at the end of the sweep",
                           self.category, self.tracking_uri, _short(exc))
            for trial in trials:
                mark_pending(self.sweep_id, self.category, trial.trial_id)
            return
        clear_pending(self.sweep_id, self.category, {t.trial_id for t in trials} - set(left))

    def reconcile_target(self) -> ReconcileTarget:
        return ReconcileTarget(
            experiment_id=self.experiment_id, parent_run_id=self.parent_run_id, sweep_id=self.sweep_id,
            category=self.category, base_config=self.base_config, step_budget=self.step_budget, tags=self.tags)


def close_run(
    client: MlflowClient, run_id: str, outcome: str, name: str, *,
    metrics: Sequence[Metric] = (), tags: Mapping[str, str] | None = None,
) -> None:
    """Give a trial run its terminal status for ``outcome`` (finished, pruned, failed), with ``metrics`` and
    ``tags`` still to write, in two requests; idempotent.

    ``name`` is the run's name without the pruned suffix. A pruned run's new name goes as MLflow's run-name tag
    in the same batch: ``update_run`` would cost a hidden ``get_run`` more.
    """
    all_tags = {**(tags or {}), TAG_OUTCOME: outcome}
    if outcome == schema.OUTCOME_PRUNED:
        all_tags[MLFLOW_RUN_NAME] = name + schema.RUN_NAME_PRUNED_SUFFIX
    _log_batch(client, run_id, metrics, all_tags)
    client.set_terminated(run_id, status=_STATUS[outcome])


def _is_closed(run: Run, outcome: str) -> bool:
    return run.info.status == _STATUS[outcome] and run.data.tags.get(TAG_OUTCOME) == outcome


def _base_name(run: Run) -> str:
    """The run's name without the pruned suffix."""
    return (run.info.run_name or "").removesuffix(schema.RUN_NAME_PRUNED_SUFFIX)


def _log_batch(client: MlflowClient, run_id: str, metrics: Sequence[Metric], tags: Mapping[str, str]) -> None:
    """``metrics`` and ``tags`` in as few requests as the REST API allows (100 tags and 1000 items a request)."""
    tag_items = [RunTag(k, v) for k, v in tags.items()]
    metric_chunks = [list(metrics[i : i + 900]) for i in range(0, len(metrics), 900)]
    tag_chunks = [tag_items[i : i + 100] for i in range(0, len(tag_items), 100)]
    for i in range(max(len(metric_chunks), len(tag_chunks))):
        client.log_batch(run_id, metrics=metric_chunks[i] if i < len(metric_chunks) else [],
                         tags=tag_chunks[i] if i < len(tag_chunks) else [])


def result_metrics(result: Mapping[str, Any], ts: int) -> list[Metric]:
    """The model metrics of one Tune result at its training step (Tune's bookkeeping, non-finite values left out)."""
    step = int(result["step"])
    return [
        Metric(key, float(value), ts, step)
        for key, value in result.items()
        if key not in _TUNE_KEYS and isinstance(value, int | float) and not isinstance(value, bool)
        and math.isfinite(value)
    ]


# --- helpers --------------------------------------------------------------------------------------


def _params_of(cfg: MemSegConfig) -> dict[str, str]:
    return {k: "None" if v is None else str(v) for k, v in cfg.flatten().items() if k not in _NOT_PARAMS}


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def _error_text(trial: Trial) -> str:
    """The text of the trial's latest failure (:func:`sweeps.driver.error_tail`), never a path to it.

    Tune writes ``error.txt`` in the trial's local staging folder first (a temporary Ray session folder)
    and syncs it to storage later, so the local file is read first, then storage, then the pickled error.
    """
    text: str | None = None
    local = trial.error_file
    if local and Path(local).is_file():
        text = Path(local).read_text(errors="replace")
    if not text:
        stored: object  # typed TuneError by Ray, but it returns error.txt's text
        pickled: object
        try:
            stored = trial.get_error()
            pickled = None if stored or not hasattr(trial, "get_pickled_error") else trial.get_pickled_error()
        except (OSError, ValueError) as exc:  # storage unreadable right now: say so rather than nothing
            stored, pickled = f"(the error text could not be read: {exc})", None
        if stored:
            text = str(stored)
        elif isinstance(pickled, BaseException):
            text = "".join(traceback.format_exception(pickled))
    if not text:
        return f"trial {trial.trial_id} failed {trial.num_failures} time(s); Tune kept no error text"
    return error_tail(text)


# --- reconciliation: Tune's own records are the truth, MLflow a projection of them ----------------------


@dataclass(frozen=True)
class ReconcileTarget:
    """Where a category's trial runs live and what a run created by reconciliation carries."""

    experiment_id: str
    parent_run_id: str
    sweep_id: str
    category: str
    base_config: Mapping[str, Any]
    step_budget: int
    tags: Mapping[str, str]


@dataclass(frozen=True)
class StoredTrial:
    """One trial as Tune recorded it: status, sampled parameters, every reported result, its latest error."""

    trial_id: str
    status: str
    config: Mapping[str, Any]
    results: list[dict[str, Any]]
    error: str | None
    num_failures: int
    path: str


def _read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        data: bytes = f.read()
    return data.decode(errors="replace")


def _results_of(text: str | None) -> list[dict[str, Any]]:
    out = []
    for line in (text or "").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # the last line of a file being written
            continue
    return out


def _fs_of(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def _stored(trial_id: str, status: str, folder: str, config: Mapping[str, Any] | None, num_failures: int,
            error: str | None = None) -> StoredTrial:
    fs, root = _fs_of(folder)
    results = _results_of(_read_text(fs, f"{root}/result.json"))
    if config is None:
        params = _read_text(fs, f"{root}/params.json")
        config = json.loads(params) if params else {}
    if error is None and status == "ERROR":
        text = _read_text(fs, f"{root}/error.txt")
        error = error_tail(text) if text else None
    return StoredTrial(trial_id, status, dict(config), results, error, num_failures, folder)


def trials_from_tune(trials: Sequence[Trial]) -> list[StoredTrial]:
    """The trials of a study that just ended, read from the driver's copy of their logs (storage is synced later)."""
    out = []
    for trial in trials:
        local = getattr(trial, "local_path", None)
        storage = getattr(trial, "storage", None)
        folder = local if local and Path(local).is_dir() else (storage.trial_fs_path if storage is not None else None)
        error = _error_text(trial) if trial.status == "ERROR" else None
        if folder is None:  # no logs to read: the last result Tune holds in memory
            results = [dict(trial.last_result)] if trial.last_result else []
            out.append(StoredTrial(trial.trial_id, trial.status, dict(trial.config), results, error,
                                   trial.num_failures, str(getattr(trial, "path", "") or "")))
            continue
        out.append(_stored(trial.trial_id, trial.status, folder, trial.config, trial.num_failures, error))
    return out


def trials_from_storage(experiment_path: str) -> list[StoredTrial]:
    """The trials of a category's Tune experiment on storage (local path or bucket URI), from its latest state file.

    The newest state is the one whose name carries the latest start time (a restore writes a new file).
    """
    fs, root = _fs_of(experiment_path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    states = sorted(i.path for i in infos if Path(i.path).name.startswith("experiment_state-")
                    and i.path.endswith(".json"))
    if not states:
        return []
    state = json.loads(_read_text(fs, states[-1]) or "{}")
    out = []
    for trial_json, meta_json in state.get("trial_data", []):
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        folder = f"{experiment_path.rstrip('/')}/{trial['relative_logdir']}"
        out.append(_stored(trial["trial_id"], trial["status"], folder, None, int(meta.get("num_failures") or 0)))
    return out


def category_result_from_storage(plan: CategoryPlan) -> CategoryResult:
    """A category's outcome as the driver summarises it after its study (best trial, counts), from storage."""
    result = CategoryResult(category=plan.category, experiment_path=plan.experiment_path)
    for trial in trials_from_storage(plan.experiment_path):
        last = trial.results[-1] if trial.results else {}
        step = last.get("step")
        score = last.get(plan.metric)
        result.trials.append(TrialSummary(
            trial_id=trial.trial_id, outcome=classify(trial.status, step, plan.step_budget),
            step=int(step) if step is not None else None,
            score=float(score) if isinstance(score, int | float) else None,
            params=dict(trial.config), checkpoint_path=None, error=trial.error,
        ))
    return pick_best(plan, result)


def reconcile_category(
    client: MlflowClient, target: ReconcileTarget, trials: Sequence[StoredTrial], *,
    check_points: set[str] | None = None,
) -> list[str]:
    """Make the category's trial runs match Tune's records: missing runs created, missing params, metric points
    (by key and step), failure tags and terminal statuses written (the study has ended), and a RUNNING run
    of a trial Tune no longer knows closed. Idempotent. Heat-map images are not rewritten.

    Args:
        check_points: the trials whose metric points are compared with the record (None = all of them); a
            trial without a run always gets all of its points.

    Returns:
        What could not be written, one line per trial (empty when MLflow now matches the record).
    """
    runs: dict[str, Run] = {}
    for run in find_runs(client, target.experiment_id, {TAG_PARENT: target.parent_run_id}):
        trial_id = run.data.tags.get(TAG_TRIAL)
        if trial_id and (trial_id not in runs or run.info.start_time < runs[trial_id].info.start_time):
            runs[trial_id] = run
    left = []
    for trial in trials:
        if not trial.results and trial.status != "ERROR":
            continue  # never reported: no run is made for it
        points = [m for r in trial.results if r.get("step") is not None
                  for m in result_metrics(r, int(float(r.get("timestamp") or time.time()) * 1000))]
        try:
            found = runs.get(trial.trial_id)
            if found is None:
                run_id = _create_trial_run(client, target, trial)
                missing = points
            else:
                run_id = found.info.run_id
                if not found.data.params:
                    cfg = trial_config(MemSegConfig.model_validate(dict(target.base_config)), dict(trial.config))
                    _log_params(client, run_id, _params_of(cfg))
                check = check_points is None or trial.trial_id in check_points
                missing = _missing_points(client, run_id, points) if check else []
            _log_batch(client, run_id, missing, {})
            if missing:
                logger.info("%s trial %s: %d metric point(s) written from Tune's results", target.category,
                            trial.trial_id, len(missing))
            _close_from_record(client, run_id, found, trial, target)
        except Exception as exc:
            left.append(f"{target.category} trial {trial.trial_id}: run, {len(points)} metric point(s) or status "
                        f"not confirmed in MLflow ({_short(exc)})")
            continue
    known = {t.trial_id for t in trials}
    for trial_id, run in runs.items():
        if run.info.status == "RUNNING" and trial_id not in known:  # a trial Tune no longer knows
            try:
                close_run(client, run.info.run_id, schema.OUTCOME_PRUNED, _base_name(run))
            except Exception as exc:
                left.append(f"{target.category} trial {trial_id}: run {run.info.run_id} left RUNNING ({_short(exc)})")
    return left


def _create_trial_run(client: MlflowClient, target: ReconcileTarget, trial: StoredTrial) -> str:
    run = client.create_run(
        target.experiment_id,
        run_name=trial_run_name(target.category, trial.trial_id),
        tags={TAG_SWEEP: target.sweep_id, TAG_CATEGORY: target.category, TAG_TRIAL: trial.trial_id,
              **target.tags, TAG_PARENT: target.parent_run_id, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_DIR: trial.path},
    )
    cfg = trial_config(MemSegConfig.model_validate(dict(target.base_config)), dict(trial.config))
    _log_params(client, run.info.run_id, _params_of(cfg))
    logger.info("%s trial %s: MLflow run %s created from Tune's record", target.category, trial.trial_id,
                run.info.run_id)
    return str(run.info.run_id)


def _missing_points(client: MlflowClient, run_id: str, points: Sequence[Metric]) -> list[Metric]:
    have: dict[str, set[int]] = {}
    out = []
    for m in points:
        if m.key not in have:
            have[m.key] = {h.step for h in client.get_metric_history(run_id, m.key)}
        if m.step not in have[m.key]:
            out.append(m)
            have[m.key].add(m.step)
    return out


def _close_from_record(
    client: MlflowClient, run_id: str, run: Run | None, trial: StoredTrial, target: ReconcileTarget
) -> None:
    """Close the run as Tune's record says the trial ended (``run``: as found before this reconciliation, None
    for a run just created); a run closed that way already costs nothing."""
    name = _base_name(run) if run is not None else trial_run_name(target.category, trial.trial_id)
    if trial.status == "ERROR":
        tags = {TAG_FAILURES: str(trial.num_failures)}
        if trial.error:
            tags[TAG_ERROR] = trial.error
        if run is not None and _is_closed(run, "failed") and all(run.data.tags.get(k) == v for k, v in tags.items()):
            return
        close_run(client, run_id, "failed", name, tags=tags)
        return
    # The study has ended: a trial not failed either finished its budget or was stopped early.
    step = trial.results[-1].get("step") if trial.results else None
    classified = classify(trial.status, step, target.step_budget)
    outcome = classified if classified in _STATUS else schema.OUTCOME_PRUNED
    if run is None or not _is_closed(run, outcome):
        close_run(client, run_id, outcome, name)


def read_heatmap_files(checkpoint: Checkpoint) -> list[bytes]:
    """The ``heatmaps/*.png`` files of a reported Tune checkpoint, in file-name order, read through its filesystem.

    Only the images are read, never the weights, so this is cheap on a bucket too.
    """
    fs = checkpoint.filesystem or pyarrow.fs.LocalFileSystem()
    folder = f"{checkpoint.path.rstrip('/')}/heatmaps"
    infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    out: list[bytes] = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pyarrow.fs.FileType.File or not info.path.lower().endswith(".png"):
            continue
        with fs.open_input_file(info.path) as f:
            out.append(f.read())
    return out


def decode_heatmaps(files: Sequence[bytes]) -> list[np.ndarray]:
    """PNG files as RGB arrays; one that does not decode is left out with a warning."""
    out: list[np.ndarray] = []
    for i, data in enumerate(files):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("cannot decode heat map %d of %d", i + 1, len(files))
            continue
        out.append(np.ascontiguousarray(bgr[..., ::-1]))
    return out


@dataclass(frozen=True)
class ValTestPending:
    """A category's trials before the test measurement: what is there and what is to be measured."""

    parent: ParentRun
    wanted: tuple[str, ...]
    trials: list[TrialRun]
    to_measure: list[TrialToMeasure]


def val_test_pending(client: MlflowClient, experiment_id: str, parent_run_id: str) -> ValTestPending:
    """The category's trial runs and which of them :func:`record_val_test` would measure on test.

    Trials train without a test evaluation (test figures never steer a sweep), so each trial that
    reported the parent's ``tune_metric`` is to be measured once: a trial run that holds every
    ``test_*`` figure already (a resumed sweep, or the registered winner) is not measured again.
    With fewer than ``MIN_TRIALS`` such trials rho is undefined whatever the test says, so none is.
    """
    parent = ParentRun.from_run(client.get_run(parent_run_id))
    wanted = schema.val_test_metrics(parent.selection_metric)
    trials = [TrialRun.from_run(r) for r in find_runs(client, experiment_id, {TAG_PARENT: parent_run_id})]
    scored = [t for t in trials if math.isfinite(t.metrics.get(parent.tune_metric, math.nan))]
    to_measure = [] if len(scored) < MIN_TRIALS else [
        TrialToMeasure(parent.category, parent.experiment_path, t.trial_id)
        for t in scored if not all(m in t.metrics for m in wanted)
    ]
    return ValTestPending(parent, wanted, trials, to_measure)


def measure_trials(
    test_figures: TrialTestFigures, trials: Sequence[TrialToMeasure]
) -> dict[TrialToMeasure, Mapping[str, float]]:
    """The figures of the trials whose measurement succeeded; each failure is logged and left out."""
    if not trials:
        return {}
    logger.info("measuring %d trials' best checkpoints on test", len(trials))
    try:
        answers = test_figures(trials)
    except Exception:  # e.g. no cluster: the parents still get closed, with the reason rho is missing
        logger.exception("cannot measure %d trials on test; they are left out of the val/test rank "
                         "correlation", len(trials))
        return {}
    out: dict[TrialToMeasure, Mapping[str, float]] = {}
    for trial in trials:
        answer = answers.get(trial)
        if isinstance(answer, Mapping):
            out[trial] = answer
            continue
        # One trial's missing checkpoint must not cost the category its figure.
        logger.error("trial %s (%s): cannot measure its best checkpoint on test; left out of the val/test rank "
                     "correlation", trial.trial_id, trial.category,
                     exc_info=answer if isinstance(answer, Exception) else None)
    return out


def write_val_test(
    client: MlflowClient, pending: ValTestPending, figures: Mapping[TrialToMeasure, Mapping[str, float]]
) -> dict[str, RankCorrelation]:
    """Log the measured ``test_*`` figures on the trial runs and the val/test rank correlations on the parent.

    Rewriting is idempotent: an unchanged figure is not logged again, and a reason tag that no longer
    applies is deleted. The parent's count says how many trials rho rests on.

    Raises:
        TrackingError: a measurement lacks a figure rho is taken against (the trial is named).

    Returns:
        rho per test metric (:func:`pipelines.schema.val_test_metrics` of the selection metric).
    """
    parent = pending.parent
    trials = []
    for trial in pending.trials:
        measured = figures.get(TrialToMeasure(parent.category, parent.experiment_path, trial.trial_id))
        if measured is None:
            trials.append(trial)
            continue
        missing = [m for m in pending.wanted if m not in measured]
        if missing:
            msg = f"trial {trial.trial_id}: the test measurement gave no {', '.join(missing)}"
            raise TrackingError(msg)
        ts = _now_ms()
        client.log_batch(trial.run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in sorted(measured.items())])
        trials.append(dataclasses.replace(trial, metrics={**trial.metrics, **measured}))
    out = {m: schema.val_test_correlation(trials, parent.tune_metric, m) for m in pending.wanted}
    for metric, corr in out.items():
        _write_correlation(client, parent, metric, corr)
    return out


def record_val_test(
    client: MlflowClient, experiment_id: str, parent_run_id: str, test_figures: TrialTestFigures
) -> dict[str, RankCorrelation]:
    """Measure one category's trials on test and write the val/test rank correlations to its parent run.

    :func:`val_test_pending` says which trials are measured, :func:`measure_trials` measures them
    and :func:`write_val_test` writes the result.
    """
    pending = val_test_pending(client, experiment_id, parent_run_id)
    return write_val_test(client, pending, measure_trials(test_figures, pending.to_measure))


def record_not_measured(
    client: MlflowClient, experiment_id: str, parent_run_id: str, reason: str
) -> dict[str, RankCorrelation]:
    """Write ``reason`` as why the parent has no val/test rho, measuring nothing.

    The count is that of the trials holding both figures already (the registered winner, say), so
    the parent reads like any parent whose rho is undefined.
    """
    pending = val_test_pending(client, experiment_id, parent_run_id)
    out = {}
    for metric in pending.wanted:
        n = len([p for p in schema.val_test_pairs(pending.trials, pending.parent.tune_metric, metric)
                 if math.isfinite(p[1])])
        out[metric] = RankCorrelation(math.nan, n, reason)
        _write_correlation(client, pending.parent, metric, out[metric])
    return out


def _write_correlation(client: MlflowClient, parent: ParentRun, metric: str, corr: RankCorrelation) -> None:
    _log_if_changed(client, parent, schema.VAL_TEST_TRIALS + metric, float(corr.n))
    reason_tag = schema.VAL_TEST_REASON + metric
    if corr.defined:
        _log_if_changed(client, parent, schema.VAL_TEST_SPEARMAN + metric, corr.rho)
        if reason_tag in client.get_run(parent.run_id).data.tags:
            client.delete_tag(parent.run_id, reason_tag)
    else:
        client.set_tag(parent.run_id, reason_tag, corr.reason)


def _log_if_changed(client: MlflowClient, parent: ParentRun, key: str, value: float) -> None:
    if parent.metrics.get(key) != value:
        client.log_metric(parent.run_id, key, value)


def close_sweep(
    tracking: SweepTracking,
    plans: Sequence[CategoryPlan],
    results: Mapping[str, CategoryResult],
    *,
    test_figures: TrialTestFigures | None = None,
    not_measured: str | None = None,
) -> None:
    """Finalize every category's parent run (called once the driver returns).

    With ``test_figures``, the trials of all the categories are measured on test in one batch; see
    :meth:`SweepTracking.finalize` for ``not_measured``.
    """
    tracking.finalize_all([(plan, results.get(plan.category)) for plan in plans],
                          test_figures=test_figures, not_measured=not_measured)
