"""The sweep driver: one Tuner + one Optuna study + one ASHA scheduler per category, all run at once.

Structure (why it looks like this)
----------------------------------
*One study per category.* A category's results must never steer another's search, and ASHA must
compare trials of the same category only. So each category gets its own ``Tuner`` with its own
``OptunaSearch`` (TPE, seeded per category) and its own ``ASHAScheduler``; the category is never a
search parameter (``grid_search`` cannot be combined with OptunaSearch anyway).

*All categories at once, from one driver, one thread per Tuner.* The alternative, one Ray job per
category, isolates drivers but needs the Jobs API (dashboard) for every sweep, a separate process to
aggregate the status table, and a ``--resume`` that re-submits 15 jobs. Running the Tuners in threads
of one driver keeps one command, one status table, one ``kill -9`` story (everything is restored from
``storage_path`` by ``Tuner.restore`` per category) and still keeps the cluster busy: every Tuner
queues its trials' placement groups with Ray, so when one category runs out of trials (its tail),
the freed CPUs/GPUs go straight to the pending trials of the others - there is no per-category
barrier. ``cluster.parallel_categories`` limits how many studies run at once (0 = all); with a limit,
a new category starts the moment one finishes. Each Tuner has its own ``max_concurrent`` so TPE
still sees finished trials before it proposes most new ones. Ray Tune supports ``fit()`` outside the
main thread (it only skips installing its SIGINT handler); Ctrl-C therefore stops the driver the
same way a crash does, and ``--resume`` continues.

*What crosses into trials.* Only the per-category trainable (``memseg_<category>``, closing over the
resolved base config with absolute paths) and the trial's sampled parameters. MLflow and the status
table are driver-side Tune callbacks injected by the caller (``callbacks_for``), so this layer never
imports mlflow. The trainable is injected too (``trainable_factory``, the real one by default): it
is how tests and simulations replace or wrap what a trial does, e.g. a real trial with a training
callback that fails at a chosen step, without a word of it in the user config.

Layout on storage: ``<storage.path>/<sweep_id>/sweep.yaml`` (the spec that ran) and
``<storage.path>/<sweep_id>/<category>/`` (one Tune experiment per category).
Once a trial has ended for good its checkpoints keep only ``best_model.pt`` and the heat maps
(``storage.prune_finished``, :mod:`sweeps.storage_pruning`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pyarrow.fs
import ray
import yaml
from ray import tune
from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.errors import ConfigError, MemSegError
from memseg.metrics.keys import STEP
from memseg.synthesis import check_texture_source
from sweeps.dataset import dataset_fingerprint, memory_pool_limit
from sweeps.search_space import CategorySpace, load_space
from sweeps.spec import ParamValue, SweepSpec, validate_spec
from sweeps.status import CategoryState, Outcome, SweepStatus, classify
from sweeps.storage_pruning import KeepLatestCheckpoints, PruneFinishedTrials
from sweeps.trainable import Trainable, make_trainable, trainable_name, trial_config

logger = logging.getLogger(__name__)

MANIFEST = "sweep.yaml"
BEST_CONFIG = "best_config.yaml"  # per category: `memseg train --config` retrains the winner


class SweepError(MemSegError):
    """The sweep cannot start or resume as asked (the message says what to change)."""


@dataclass(frozen=True)
class CategoryPlan:
    """Everything the driver needs to run (or resume) one category's study."""

    sweep_id: str
    category: str
    base_config: MemSegConfig
    space: CategorySpace
    storage_path: str
    metric: str
    step_budget: int
    seed: int
    dataset_fingerprint: str

    @property
    def experiment_name(self) -> str:
        return self.category

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.category}"


@dataclass
class TrialSummary:
    """One trial after the study ended."""

    trial_id: str
    outcome: Outcome
    step: int | None
    score: float | None
    params: dict[str, ParamValue]
    checkpoint_path: str | None
    error: str | None = None


@dataclass
class CategoryResult:
    """One category after its study ended (or failed as a whole)."""

    category: str
    experiment_path: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    best_config: MemSegConfig | None = None
    best_config_path: str | None = None
    error: str | None = None
    error_detail: str | None = None  # the full (truncated) error text behind ``error``, when there is more

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.outcome] = out.get(t.outcome, 0) + 1
        return out


@dataclass
class SweepResult:
    sweep_id: str
    metric: str
    storage_path: str
    categories: dict[str, CategoryResult]
    wall_time_s: float


ERROR_TEXT_CHARS = 2000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""How much of a failed trial's error is kept (the end of its latest failure: the exception and the frames
nearest to it)."""


def error_tail(text: str, limit: int = ERROR_TEXT_CHARS) -> str:
    """The latest failure of a trial's error text, cut to its last ``limit`` characters.

    Tune appends one ``Failure # N (occurred at ...)`` section per attempt to a trial's ``error.txt``;
    only the last one says why the trial ended.
    """
    text = _ANSI.sub("", text).strip()  # Ray colours the actor's name for terminals
    marker = text.rfind("Failure # ")
    if marker > 0:
        text = text[marker:]
    return text if len(text) <= limit else "...\n" + text[-limit:]


def last_line(text: str) -> str:
    """The exception line of an error text (its last non-empty line), for one-line summaries."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text.strip()


def tune_metric(cfg: MemSegConfig) -> str:
    """The metric Tune, ASHA and Optuna maximise: the best-so-far value of the config's selection metric.

    ``best_<selection metric>`` is what the trial's ``best_model.pt`` scores, and it does not drop
    when one evaluation is noisy, so ASHA prunes on what the trial would actually deliver.
    """
    return f"best_{cfg.eval.selection_metric}"


def make_sweep_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def is_uri(path: str) -> bool:
    return "://" in path


def absolute_storage(path: str) -> str:
    """Bucket URIs unchanged; local paths absolute (Tune's trial cwd must not swallow them)."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def category_seed(seed: int, category: str) -> int:
    """A per-category sampler seed: reproducible, and different across categories."""
    return (seed * 1_000_003 + zlib.crc32(category.encode())) % (2**31)


def plan_sweep(spec: SweepSpec, sweep_id: str, categories: Sequence[str] | None = None) -> list[CategoryPlan]:
    """Resolve every category's base config, bind the search space and fix the storage layout.

    Raises:
        ConfigError: for an unknown search space, a texture source without its DTD images (naming
            ``data.dtd_root``), a missing category folder or a category too small
            for its validation split.
    """
    categories = list(categories or spec.categories)
    space = load_space(spec.search.space)
    data_root = str(Path(spec.data.root).expanduser().resolve())
    base = spec.base_config().with_overrides({"data.root": data_root})
    # Here rather than in every trial: a sweep without its DTD textures stops before it starts.
    check_texture_source(base.data)
    storage = f"{absolute_storage(spec.storage.path).rstrip('/')}/{sweep_id}"
    plans = []
    capped = False
    for category in categories:
        if not (Path(data_root) / category).is_dir():
            raise ConfigError(f"data.root: {Path(data_root) / category} does not exist (category {category!r})")
        cfg = resolve_for_category(base.with_overrides({"data.category": category}), category)
        if cfg.data.dtd_root is not None:
            cfg = cfg.with_overrides({"data.dtd_root": str(Path(cfg.data.dtd_root).expanduser().resolve())})
        pool = memory_pool_limit(data_root, cfg)
        if cfg.model.memory_size is None:
            raise ConfigError(f"model.memory_size: not resolved for category {category!r}")
        if cfg.model.memory_size > pool:
            # The authors' N (30; 120 for screw) does not fit a small train/good folder; every trial of
            # the category, swept or not, uses the largest N that leaves validation and training images.
            # Said once per sweep; the other categories' caps only at DEBUG (one line each adds nothing).
            logger.log(logging.DEBUG if capped else logging.INFO, "%s: model.memory_size %d capped to %d by "
                       "train/good (small train/good folders are capped likewise)", category,
                       cfg.model.memory_size, pool)
            capped = True
            cfg = cfg.with_overrides({"model.memory_size": pool})
        plans.append(
            CategoryPlan(
                sweep_id=sweep_id,
                category=category,
                base_config=cfg,
                space=space.for_category(cfg, memory_pool=pool),
                storage_path=storage,
                metric=tune_metric(cfg),
                step_budget=cfg.train.steps,
                seed=category_seed(spec.search.seed, category),
                dataset_fingerprint=dataset_fingerprint(data_root, category),
            )
        )
    for plan in plans:  # unknown extra-point keys fail now, not in a study thread
        plan.space.points_to_evaluate(spec.search.extra_points)
    return plans


# --- storage manifest -----------------------------------------------------------------------------


def _fs(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def write_manifest(spec: SweepSpec, sweep_id: str, categories: Sequence[str]) -> str:
    """Record the spec a sweep runs with next to its experiments (``--resume`` reads it back)."""
    root = f"{absolute_storage(spec.storage.path).rstrip('/')}/{sweep_id}"
    fs, path = _fs(root)
    fs.create_dir(path, recursive=True)
    doc = {"sweep_id": sweep_id, "created": time.time(), "categories": list(categories), "spec": spec.model_dump()}
    with fs.open_output_stream(f"{path}/{MANIFEST}") as out:
        out.write(yaml.safe_dump(doc, sort_keys=False).encode())
    return root


def read_manifest(storage_path: str, sweep_id: str) -> tuple[SweepSpec, list[str]] | None:
    """The spec and categories a sweep was started with, or None when there is no such sweep."""
    fs, path = _fs(f"{absolute_storage(storage_path).rstrip('/')}/{sweep_id}/{MANIFEST}")
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        doc = yaml.safe_load(f.read().decode())
    return validate_spec(doc["spec"], path), list(doc["categories"])


def latest_sweep_id(storage_path: str, name: str) -> str | None:
    """The most recently started sweep of spec ``name`` under ``storage_path`` (for ``--resume``)."""
    fs, root = _fs(absolute_storage(storage_path))
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        return None
    best: tuple[float, str] | None = None
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        manifest = f"{info.path}/{MANIFEST}"
        if fs.get_file_info(manifest).type != pyarrow.fs.FileType.File:
            continue
        with fs.open_input_stream(manifest) as f:
            doc = yaml.safe_load(f.read().decode())
        if doc.get("spec", {}).get("name") == name and (best is None or doc["created"] > best[0]):
            best = (doc["created"], doc["sweep_id"])
    return best[1] if best else None


# --- Ray -------------------------------------------------------------------------------------------


def connect_ray(env_vars: Mapping[str, str] | None = None, local_num_cpus: int | None = None) -> int:
    """Join ``RAY_ADDRESS`` (or start a local instance when it is unset) and return the number of alive nodes.

    ``env_vars`` reach every worker of this job through ``runtime_env`` (tracking URI, credentials).
    """
    if not ray.is_initialized():
        # Inside `ray job submit` the job's runtime_env already reaches every worker, and Ray refuses
        # to merge an init runtime_env that sets the same variables again: pass only what it lacks.
        job_env = _job_runtime_env_vars()
        missing = {k: v for k, v in (env_vars or {}).items() if k not in job_env}
        runtime_env = {"env_vars": missing} if missing else None
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                address="local", num_cpus=local_num_cpus, runtime_env=runtime_env, include_dashboard=False,
                log_to_driver=False, logging_level=logging.WARNING,
            )
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _job_runtime_env_vars() -> dict[str, str]:
    """Environment variables the enclosing Ray job's runtime_env sets (empty outside a Ray job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    return dict(runtime_env.get("env_vars") or {})


def cluster_resources() -> dict[str, float]:
    return dict(ray.cluster_resources())


# --- Tune ------------------------------------------------------------------------------------------

# Ray Tune's trainable registry is not thread-safe (``register`` iterates a dict another thread may be
# filling), so the studies start one after the other: each waits until the previous one reached its
# callbacks' ``setup`` (registration done), then they all run side by side.
_STARTED: dict[str, threading.Event] = {}
_STARTED_LOCK = threading.Lock()
STARTUP_TIMEOUT_S = 300.0


def _start_key(plan: CategoryPlan) -> str:
    return f"{plan.sweep_id}/{plan.category}"


class StudyStartedCallback(Callback):
    """Signals the driver that a study got past its start-up (holds only a key, so it pickles)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def setup(
        self,
        stop: Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: object,
    ) -> None:
        with _STARTED_LOCK:
            event = _STARTED.get(self.key)
        if event is not None:
            event.set()


def _release_when(event: threading.Event, lock: threading.Lock) -> None:
    event.wait(STARTUP_TIMEOUT_S)
    lock.release()


def trial_dirname(trial: Trial) -> str:
    """Short trial folder names (the default embeds every parameter, brackets included)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def build_tuner(
    plan: CategoryPlan,
    spec: SweepSpec,
    callbacks: Sequence[Callback],
    *,
    trainable_factory: TrainableFactory | None = None,
) -> tune.Tuner:
    """A fresh Tuner for one category: TPE (seeded) + ASHA on ``step`` + per-trial resources.

    Args:
        trainable_factory: what the trials run (default: :func:`default_trainable`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per category is noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=plan.seed,
            n_startup_trials=spec.search.n_startup_trials,
            multivariate=True,
            group=True,  # the space is conditional (optimiser branches)
            constant_liar=True,  # parallel trials do not all land on the same point
        )
    searcher = OptunaSearch(
        space=plan.space,
        metric=plan.metric,
        mode="max",
        points_to_evaluate=plan.space.points_to_evaluate(
            spec.search.extra_points, defaults_first=spec.search.defaults_first
        ) or None,
        sampler=sampler,
        study_name=f"{plan.sweep_id}-{plan.category}",
    )
    if spec.scheduler.kind == "asha":
        eval_interval = plan.base_config.train.eval_interval
        scheduler: TrialScheduler = ASHAScheduler(
            time_attr=STEP,
            metric=plan.metric,
            mode="max",
            max_t=plan.step_budget,
            grace_period=min(plan.step_budget, spec.scheduler.grace_period_evals * eval_interval),
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        _with_resources(plan, spec, trainable_factory or default_trainable),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.search.num_samples,
            max_concurrent_trials=spec.search.max_concurrent or None,
            time_budget_s=spec.budget.time_budget_s,
            trial_dirname_creator=trial_dirname,
            reuse_actors=spec.cluster.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=plan.experiment_name,
            storage_path=plan.storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
            # No num_to_keep: KeepLatestCheckpoints retires old checkpoints without Tune's forced snapshots.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[*callbacks, StudyStartedCallback(_start_key(plan)), *_storage_callbacks(spec)],
            verbose=0,
        ),
    )


def _storage_callbacks(spec: SweepSpec) -> list[Callback]:
    """Disk hygiene (a trial's older checkpoints retired, those of ended trials pruned); restored with the study."""
    keep: list[Callback] = [KeepLatestCheckpoints(spec.storage.checkpoints_to_keep)]
    return [*keep, PruneFinishedTrials()] if spec.storage.prune_finished else keep


TrainableFactory = Callable[[CategoryPlan], Trainable]
"""What a category's trials run: the real trainable (:func:`default_trainable`), or a test's or a
simulation's replacement or wrapper. It must keep the trainable's name (``memseg_<category>``):
``Tuner.restore`` looks the trainable up by it."""


def default_trainable(plan: CategoryPlan) -> Trainable:
    """The real trainable: trains the category's base config plus the trial's parameters."""
    return make_trainable(plan.category, plan.base_config)


def _with_resources(plan: CategoryPlan, spec: SweepSpec, trainable_factory: TrainableFactory) -> Trainable:
    fn = trainable_factory(plan)
    name = fn.__name__
    if name != trainable_name(plan.category):
        msg = (f"{plan.category}: the trainable_factory returned {name!r}; a trainable must be named "
               f"{trainable_name(plan.category)!r} (Tune registers and restores trainables by name)")
        raise SweepError(msg)
    resources = {"cpu": spec.resources.cpu}
    if spec.resources.gpu:
        resources["gpu"] = spec.resources.gpu
    trainable: Trainable = tune.with_resources(fn, resources)
    return trainable


def run_category(
    plan: CategoryPlan,
    spec: SweepSpec,
    *,
    resume: bool,
    callbacks: Sequence[Callback] = (),
    trainable_factory: TrainableFactory | None = None,
    retry_failed: bool = False,
) -> CategoryResult:
    """Run (or resume) one category's study to the end and summarise it.

    A fresh study gets ``callbacks``; a restored one gets back the callbacks it was started with
    (Tune restores them from its experiment state), which is why they must pickle. The trainable
    is not restored: ``trainable_factory`` (default :func:`default_trainable`) makes it again.
    With ``retry_failed`` a restored study runs its errored trials again, from their last checkpoint
    (once their cause is fixed); without it they stay failed.
    """
    factory = trainable_factory or default_trainable
    path = plan.experiment_path
    restorable = tune.Tuner.can_restore(path)
    if restorable and not resume:
        msg = f"{path} already holds this sweep's {plan.category} study: pass --resume, or a new --sweep-id"
        raise SweepError(msg)
    if restorable:
        logger.info("%s: restoring the study from %s", plan.category, path)
        tuner = tune.Tuner.restore(path, trainable=_with_resources(plan, spec, factory), resume_unfinished=True,
                                   resume_errored=retry_failed)
    else:
        if resume:
            logger.info("%s: nothing to resume at %s, starting the study", plan.category, path)
        tuner = build_tuner(plan, spec, callbacks, trainable_factory=factory)
    grid = tuner.fit()
    result = summarize_grid(plan, grid)
    if result.best_config is not None:
        result.best_config_path = write_text(f"{plan.experiment_path}/{BEST_CONFIG}", result.best_config.to_yaml())
    return result


def write_text(path: str, text: str) -> str:
    """Write a small text file to a local path or a bucket URI; returns the path."""
    fs, fs_path = _fs(path)
    with fs.open_output_stream(fs_path) as out:
        out.write(text.encode())
    return path


def summarize_grid(plan: CategoryPlan, grid: tune.ResultGrid) -> CategoryResult:
    """Outcome, score and parameters of every trial, and the best one, from a ``ResultGrid``."""
    result = CategoryResult(category=plan.category, experiment_path=plan.experiment_path)
    for index in range(len(grid)):  # ResultGrid is indexable, not iterable
        r = grid[index]
        metrics = r.metrics or {}
        step = metrics.get(STEP)
        status = "ERROR" if r.error else ("TERMINATED" if step is not None else "PENDING")
        score = metrics.get(plan.metric)
        result.trials.append(
            TrialSummary(
                trial_id=str(metrics.get("trial_id") or Path(r.path).name),
                outcome=classify(status, step, plan.step_budget),
                step=int(step) if step is not None else None,
                score=float(score) if isinstance(score, int | float) else None,
                params=dict(r.config or {}),
                checkpoint_path=r.checkpoint.path if r.checkpoint else None,
                error=error_tail(str(r.error)) if r.error else None,
            )
        )
    return pick_best(plan, result)


def pick_best(plan: CategoryPlan, result: CategoryResult) -> CategoryResult:
    """Set the best trial (and its config) of ``result``'s trials, or, with no scored trial, the first trial error."""
    scored = [(t.score, t) for t in result.trials if t.score is not None and t.score == t.score]  # NaN != NaN
    if scored:
        result.best = max(scored, key=lambda pair: pair[0])[1]
        result.best_config = trial_config(plan.base_config, result.best.params)
    else:
        failed = [t for t in result.trials if t.error]
        if failed:  # no scored trial: the category failed, and the first trial error says why
            result.error = f"no trial scored; trial {failed[0].trial_id} failed: {last_line(failed[0].error or '')}"
            result.error_detail = failed[0].error
    return result


def run_sweep(
    spec: SweepSpec,
    plans: Sequence[CategoryPlan],
    *,
    resume: bool = False,
    callbacks_for: Callable[[CategoryPlan], Sequence[Callback]] | None = None,
    board: SweepStatus | None = None,
    trainable_factory: TrainableFactory | None = None,
    retry_failed: bool = False,
) -> SweepResult:
    """Run every category's study concurrently (see the module docstring) and wait for all of them.

    A category that fails as a whole (not a trial: its Tuner) is reported in its
    :class:`CategoryResult` and does not stop the others.

    Args:
        callbacks_for: the driver-side Tune callbacks of a category's fresh study (tracking, status).
        board: the live status board the categories' states go to.
        trainable_factory: what each category's trials run (default :func:`default_trainable`, the
            real training). Tests and simulations pass their own here, usually
            ``lambda plan: make_trainable(plan.category, plan.base_config, extra_callbacks=...)``.
        retry_failed: on resume, run the errored trials again (:func:`run_category`).
    """
    if spec.storage.snapshot_interval_s is not None:
        # Read by every TuneController at start; one value for the whole driver.
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(spec.storage.snapshot_interval_s)
    # Per-experiment snapshots are frequent with small trials; Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # 15 studies printing Tune's own tables would bury the status table; verbose=0 only silences them
    # on the classic output path.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = time.monotonic()
    results: dict[str, CategoryResult] = {}
    lock = threading.Lock()
    startup = threading.Lock()

    def one(plan: CategoryPlan) -> None:
        event = threading.Event()
        with _STARTED_LOCK:
            _STARTED[_start_key(plan)] = event
        startup.acquire()
        threading.Thread(target=_release_when, args=(event, startup), daemon=True).start()
        if board is not None:
            board.set_state(plan.category, "running")
        try:
            callbacks = list(callbacks_for(plan)) if callbacks_for else []
            res = run_category(plan, spec, resume=resume, callbacks=callbacks, trainable_factory=trainable_factory,
                               retry_failed=retry_failed)
            state: CategoryState = "error" if res.error else "done"
            error: str | None = res.error
        except (MemSegError, ConfigError) as exc:
            res = CategoryResult(plan.category, plan.experiment_path, error=str(exc))
            state, error = "error", str(exc)
        except Exception as exc:  # one category's crash must not end the others
            logger.error("%s: study crashed\n%s", plan.category, traceback.format_exc())
            res = CategoryResult(plan.category, plan.experiment_path, error=f"{type(exc).__name__}: {exc}")
            state, error = "error", res.error
        finally:
            event.set()  # start-up over, whatever happened
        if board is not None:
            board.set_state(plan.category, state, error)
        with lock:
            results[plan.category] = res

    workers = spec.cluster.parallel_categories or len(plans)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="study")
    futures = [pool.submit(one, plan) for plan in plans]
    try:
        while not all(f.done() for f in futures):
            time.sleep(0.5)  # a timed wait, so Ctrl-C reaches the main thread
    except KeyboardInterrupt:
        # The studies' threads cannot be interrupted; the caller ends the process, and --resume
        # continues from the last experiment snapshot exactly as after a crash.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return SweepResult(
        sweep_id=plans[0].sweep_id if plans else "",
        metric=plans[0].metric if plans else "",
        storage_path=plans[0].storage_path if plans else "",
        categories={p.category: results[p.category] for p in plans},
        wall_time_s=time.monotonic() - started,
    )
