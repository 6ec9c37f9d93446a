"""What the sweep stage records for the report's "Sweep gain" section when a category's study has ended.

On the category's parent run: which trial ran the authors' defaults (:data:`pipelines.schema.TAG_DEFAULTS_TRIAL`:
the trial whose Tune config holds the space's default point, which Optuna evaluates first) and the
training-free baseline's figures (:func:`memseg.baselines.evaluate_baseline` with that trial's config, so
the same memory images, validation set and test split; ``baseline.*`` metrics). On the defaults trial's
run: its ``test_*`` figures, measured like every trial's (:data:`pipelines.tracking.TrialTestFigures`)
unless the run holds them already (the val/test measurement of a category with enough trials) or the
trial is the winner (registration measures the winner). A resumed sweep does not compute them again.

The baseline runs here, in the driver, on the CPU: one feature pass over the memory, validation and
test images, no training (about a second per category at the demo's size). A baseline that cannot be
computed is logged as an error and left out of the report; the category's trials are tracked already.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from memseg.baselines import evaluate_baseline
from memseg.config import MemSegConfig
from memseg.metrics import keys
from pipelines import schema, tracking
from sweeps.trainable import trial_config

if TYPE_CHECKING:
    from sweeps.driver import CategoryPlan, CategoryResult, TrialSummary
    from sweeps.spec import ParamValue

logger = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def defaults_trial(trials: Sequence[TrialSummary], point: Mapping[str, ParamValue]) -> TrialSummary | None:
    """The first trial whose config holds every value of the authors' default ``point`` (None when none does)."""
    return next((t for t in trials if all(k in t.params and t.params[k] == v for k, v in point.items())), None)


def baseline_metrics(cfg: MemSegConfig, *, device: str = "cpu", threads: int = 1) -> dict[str, float]:
    """The parent run's ``baseline.*`` metrics: :func:`evaluate_baseline`'s reported figures and its wall time.

    Torch runs ``threads`` intra-op threads meanwhile (restored after): the work is small, and on a
    machine busy with trials more threads than cores make it several times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        figures = evaluate_baseline(cfg, device=device)
    finally:
        torch.set_num_threads(previous)
    wanted = {f"{split}{m}" for split in (keys.VAL_PREFIX, keys.TEST_PREFIX) for m in schema.REPORTED_METRICS}
    out = {f"{schema.BASELINE_PREFIX}{k}": v for k, v in figures.items() if k in wanted and math.isfinite(v)}
    out[schema.BASELINE_WALL_TIME] = figures["wall_time_s"]
    return out


def record_gain_inputs(
    client: MlflowClient,
    experiment_id: str,
    categories: Sequence[tuple[CategoryPlan, CategoryResult | None, str]],
    *,
    test_figures: tracking.TrialTestFigures | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> None:
    """Tag each ended category's defaults trial, log its baseline, and measure the defaults trial on test.

    Args:
        categories: (plan, the driver's result, the parent run id) per category.
        test_figures: measures trials on test (None: the defaults trial is not measured).
        device: where the baseline runs.
        threads: torch's threads for the baseline (a trial's, in a sweep).
    """
    to_measure: dict[tracking.TrialToMeasure, str] = {}
    for plan, result, parent_id in categories:
        if result is None or result.best is None:
            continue
        parent = schema.ParentRun.from_run(client.get_run(parent_id))
        trial = defaults_trial(result.trials, plan.space.default_point())
        if trial is not None and parent.defaults_trial_id != trial.trial_id:
            client.set_tag(parent_id, schema.TAG_DEFAULTS_TRIAL, trial.trial_id)
        if schema.BASELINE_WALL_TIME not in parent.metrics:
            cfg = trial_config(plan.base_config, trial.params) if trial is not None else plan.base_config
            ts = _now_ms()
            try:
                figures = baseline_metrics(cfg, device=device, threads=threads)
            except Exception:  # the trials are tracked already; the report shows "-" for this baseline
                logger.exception("%s: cannot compute the training-free baseline; the report leaves it out",
                                 plan.category)
            else:
                client.log_batch(parent_id, metrics=[Metric(k, v, ts, 0) for k, v in sorted(figures.items())])
                logger.info("%s: training-free baseline in %.1f s", plan.category,
                            figures[schema.BASELINE_WALL_TIME])
        if trial is None or trial.trial_id == result.best.trial_id or test_figures is None:
            continue
        runs = tracking.find_runs(client, experiment_id,
                                  {schema.TAG_PARENT: parent_id, schema.TAG_TRIAL: trial.trial_id})
        wanted = keys.TEST_PREFIX + parent.selection_metric.removeprefix(keys.VAL_PREFIX)
        if runs and wanted not in runs[0].data.metrics:
            pending = tracking.TrialToMeasure(plan.category, plan.experiment_path, trial.trial_id)
            to_measure[pending] = runs[0].info.run_id
    if test_figures is None or not to_measure:
        return
    for trial_to_measure, measured in tracking.measure_trials(test_figures, list(to_measure)).items():
        ts = _now_ms()
        client.log_batch(to_measure[trial_to_measure],
                         metrics=[Metric(k, float(v), ts, 0) for k, v in sorted(measured.items())])
