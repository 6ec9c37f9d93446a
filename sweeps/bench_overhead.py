"""The sweep-overhead section of ``memseg bench``: the share of a trial's wall time not spent in
training steps.

A tiny sweep runs for real with this package (:func:`sweeps.driver.plan_sweep` /
:func:`sweeps.driver.run_sweep`, the smoke spec shrunk to one category and ``trials`` FIFO trials
run one after another) on a fresh local Ray instance. A driver-side Tune callback records when each
trial starts and completes and the trainable's own clock (``time_total_s``). Afterwards the seconds
per training step of each trial's configuration are measured in this process
(:func:`memseg.bench.training.measure_training_step`, one thread as a 1-CPU trial has), so

    in_step_i   = steps_i x step_s_i
    cost_i      = trial_wall_i + fixed / n     (fixed = sweep wall - sum of trial walls: Ray start-up,
                                                Tuner/searcher set-up, scheduling gaps, shutdown)
    overhead_i  = 1 - in_step_i / cost_i

and the figure ``sweep.overhead_share`` is the median (min, max) of ``overhead_i`` over the trials.
The breakdown per trial separates the trial process's start and teardown (``trial_wall -
time_total_s``) from the work inside the trainable that is not a step (data split, validation set,
model and memory build, validations, checkpoints, ``tune.report``). Driver-side tracking (MLflow)
is injected by the caller through ``tracking``, as in ``memseg sweep``; this module never imports
mlflow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.tune import Callback
from ray.tune.experiment import Trial

from memseg.bench.figures import Stats, summarize
from memseg.bench.machine import torch_threads
from memseg.bench.report import BenchReport
from memseg.bench.training import measure_training_step
from memseg.bench.workload import BenchData
from memseg.data.datasets import category_splits
from sweeps.bench_figures import OVERHEAD
from sweeps.dataset import ensure_dataset
from sweeps.driver import CategoryPlan, SweepResult, plan_sweep, run_sweep
from sweeps.spec import SweepSpec, load_sweep_spec
from sweeps.trainable import trial_config

# Driver-side timelines, keyed by a bench id: Tune may copy (pickle) its callbacks, so the callback
# holds only the key and writes here.
_TIMELINES: dict[str, dict[str, dict[str, float]]] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrackingHooks:
    """What a tracking layer hands the bench for a planned sweep: the driver-side callbacks of each
    category, and what to call once the sweep has ended."""

    callbacks_for: Callable[[CategoryPlan], Sequence[Callback]]
    close: Callable[[SweepResult], None]


# tracking(sweep_id, plans) -> hooks
Tracking = Callable[[str, list[CategoryPlan]], TrackingHooks]


class TrialTimer(Callback):
    """Records, per trial, the driver's clock at start and completion and the trainable's ``time_total_s``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _record(self, trial: Trial, **values: float) -> None:
        with _LOCK:
            _TIMELINES.setdefault(self.key, {}).setdefault(str(trial.trial_id), {}).update(values)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._record(trial, start=time.monotonic())

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, object], **info: object
    ) -> None:
        values = {"last_result": time.monotonic()}
        total = result.get("time_total_s")
        if isinstance(total, int | float):
            values["time_total_s"] = float(total)
        self._record(trial, **values)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._record(trial, end=time.monotonic())

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._record(trial, end=time.monotonic(), error=1.0)


@dataclass
class TrialOverhead:
    """One trial's time, split into training steps and everything else (seconds)."""

    trial_id: str
    steps: int
    step_s: float
    in_step_s: float
    trial_wall_s: float
    trainable_s: float
    fixed_share_s: float

    @property
    def cost_s(self) -> float:
        return self.trial_wall_s + self.fixed_share_s

    @property
    def overhead_share(self) -> float:
        return 1.0 - self.in_step_s / self.cost_s if self.cost_s > 0 else float("nan")

    def to_dict(self) -> dict[str, str | int | float]:
        return {
            "trial_id": self.trial_id,
            "steps": self.steps,
            "step_s": self.step_s,
            "in_step_s": self.in_step_s,
            "trial_wall_s": self.trial_wall_s,
            "trainable_s": self.trainable_s,
            "trainable_non_step_s": max(0.0, self.trainable_s - self.in_step_s),
            "process_start_and_teardown_s": max(0.0, self.trial_wall_s - self.trainable_s),
            "ray_and_driver_share_s": self.fixed_share_s,
            "overhead_share": self.overhead_share,
        }


@dataclass
class SweepOverhead:
    """What :func:`measure_sweep_overhead` found."""

    sweep_wall_s: float
    ray_start_s: float
    ray_shutdown_s: float
    trials: list[TrialOverhead] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)

    def stats(self) -> Stats:
        """``sweep.overhead_share`` over the trials."""
        return summarize([t.overhead_share for t in self.trials])

    def details(self) -> dict[str, object]:
        return {
            "sweep_wall_s": self.sweep_wall_s,
            "ray_start_s": self.ray_start_s,
            "ray_shutdown_s": self.ray_shutdown_s,
            "settings": self.settings,
            "trials": [t.to_dict() for t in self.trials],
        }


def overhead_spec(workdir: Path, *, trials: int, steps: int, size: int, category: str) -> SweepSpec:
    """The smoke sweep spec shrunk to one category and ``trials`` sequential FIFO trials of ``steps`` steps."""
    return load_sweep_spec("smoke").with_changes(
        {
            "name": "bench-overhead",
            "categories": [category],
            "data.root": str(workdir / "data"),
            "data.generate.size": size,
            "base.data.image_size": size,
            "base.train.steps": steps,
            "base.train.eval_interval": max(1, steps // 2),
            "base.train.log_interval": max(1, steps // 2),
            "search.num_samples": trials,
            "search.max_concurrent": 1,
            "search.n_startup_trials": 1,
            # FIFO: every trial runs its whole budget, so the step count per trial is known.
            "scheduler.kind": "fifo",
            "resources.cpu": 1,
            "resources.gpu": 0,
            "storage.path": str(workdir / "storage"),
        }
    )


def measure_sweep_overhead(
    workdir: str | Path,
    *,
    trials: int = 2,
    steps: int = 8,
    size: int = 64,
    category: str = "carpet",
    num_cpus: int | None = None,
    step_repeats: int = 3,
    tracking: Tracking | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepOverhead:
    """Run a tiny local sweep and split each trial's wall time into training steps and overhead.

    Args:
        workdir: where the generated data, Tune storage and any tracking store go.
        trials: trials (run one after another).
        steps: training steps per trial.
        size: image size of the sweep (the smoke spec's 64 px by default).
        category: generated category the sweep runs on.
        num_cpus: CPUs of the local Ray instance (None: all).
        step_repeats: timed steps when measuring a trial configuration's step time.
        tracking: driver-side trackers to include in the measurement (``memseg bench`` passes MLflow
            tracking here).
        log: progress lines.

    Raises:
        RuntimeError: when Ray is already initialised in this process (the start-up would not be
            measured) or a trial did not finish.
    """
    log = log or (lambda _line: None)
    if ray.is_initialized():
        msg = "measure_sweep_overhead: Ray is already initialised in this process; run it in a fresh process"
        raise RuntimeError(msg)
    workdir = Path(workdir).resolve()
    spec = overhead_spec(workdir, trials=trials, steps=steps, size=size, category=category)
    g = spec.data.generate
    if g is None:
        msg = "sweep overhead: the smoke spec has no data.generate section to generate its data with"
        raise RuntimeError(msg)
    ensure_dataset(Path(spec.data.root), spec.categories, size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                   n_test_defect=g.n_test_defect, seed=g.seed)
    key = uuid.uuid4().hex
    sweep_id = f"bench-{key[:8]}"
    snapshot = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")

    log(f"sweep overhead: {trials} trial(s) x {steps} steps at {size} px on a local Ray instance")
    started = time.monotonic()
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        ray_start = time.monotonic() - started
        plans = plan_sweep(spec, sweep_id, spec.categories)
        hooks = tracking(sweep_id, plans) if tracking is not None else None

        def callbacks_for(plan: CategoryPlan) -> list[Callback]:
            extra = list(hooks.callbacks_for(plan)) if hooks is not None else []
            return [*extra, TrialTimer(key)]

        result = run_sweep(spec, plans, callbacks_for=callbacks_for)
        if hooks is not None:
            hooks.close(result)
    finally:
        stopping = time.monotonic()
        if ray.is_initialized():
            ray.shutdown()
        ray_shutdown = time.monotonic() - stopping
        sweep_wall = time.monotonic() - started
        # run_sweep sets the snapshot period for the whole process; leave it as it was.
        if snapshot is None:
            os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
        else:
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = snapshot
    with _LOCK:
        timeline = _TIMELINES.pop(key, {})

    category_result = result.categories[category]
    if category_result.error:
        msg = f"sweep overhead: the {category} study failed: {category_result.error}"
        raise RuntimeError(msg)
    done = [t for t in category_result.trials if t.step]
    if not done:
        msg = f"sweep overhead: no trial reported a step ({[t.error for t in category_result.trials]})"
        raise RuntimeError(msg)

    walls = {tid: v["end"] - v["start"] for tid, v in timeline.items() if "start" in v and "end" in v}
    fixed = max(0.0, sweep_wall - sum(walls.values()))
    log("sweep overhead: timing the trials' training steps in this process (1 thread)")
    out = SweepOverhead(sweep_wall, ray_start, ray_shutdown, settings={
        "trials": trials, "steps": steps, "size": size, "category": category, "sweep_id": sweep_id,
        "batch_size": plans[0].base_config.train.batch_size, "tracking": tracking is not None,
    })
    step_cache: dict[str, float] = {}
    for t in done:
        if t.trial_id not in walls:
            continue
        cfg = trial_config(plans[0].base_config, t.params)
        cfg_key = cfg.model_dump_json()
        if cfg_key not in step_cache:
            _, splits = category_splits(cfg)
            data = BenchData(Path(cfg.data.root), splits.memory, splits.train)
            with torch_threads(1):
                step_cache[cfg_key] = measure_training_step(cfg, data, repeats=step_repeats, warmup=1).step_s.median
        step_s = step_cache[cfg_key]
        n_steps = int(t.step or 0)
        out.trials.append(
            TrialOverhead(
                trial_id=t.trial_id,
                steps=n_steps,
                step_s=step_s,
                in_step_s=n_steps * step_s,
                trial_wall_s=walls[t.trial_id],
                trainable_s=float(timeline[t.trial_id].get("time_total_s", walls[t.trial_id])),
                fixed_share_s=fixed / max(1, len(walls)),
            )
        )
    if not out.trials:
        msg = "sweep overhead: no trial has both a start and an end time"
        raise RuntimeError(msg)
    return out


def record_sweep_overhead(
    report: BenchReport,
    workdir: str | Path,
    *,
    trials: int = 2,
    steps: int = 8,
    size: int = 64,
    step_repeats: int = 3,
    tracking: Tracking | None = None,
    log: Callable[[str], None] | None = None,
) -> bool:
    """Measure the sweep overhead (:func:`measure_sweep_overhead`) into ``report``.

    Returns:
        False when the measurement failed: the figure is then recorded as skipped with the error,
        and the rest of the report is kept (the caller exits non-zero).
    """
    log = log or (lambda _line: None)
    try:
        overhead = measure_sweep_overhead(workdir, trials=trials, steps=steps, size=size, step_repeats=step_repeats,
                                          tracking=tracking, log=log)
        stats = overhead.stats()
    except Exception as exc:  # any failure of a real Ray sweep; the other sections' figures stay valid
        log(f"sweep overhead failed: {type(exc).__name__}: {exc}")
        report.skip(OVERHEAD, f"failed: {type(exc).__name__}: {exc}")
        return False
    report.add(OVERHEAD, stats)
    report.details["sweep_overhead"] = overhead.details()
    report.derived["sweep_step_share_per_trial"] = ", ".join(f"{1 - t.overhead_share:.1%}" for t in overhead.trials)
    return True
