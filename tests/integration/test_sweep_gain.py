"""The report's sweep gain, from runs the real tracking callback wrote to a real ``mlflow server`` (SQLite
backend) for two finished trials of one category (the authors' defaults and a tuned trial), after the sweep
stage's records (:func:`pipelines.gain_tracking.record_gain_inputs`): the figures match the trials' MLflow
metrics, the training-free baseline equals ``evaluate_baseline`` on the defaults trial's config, and the
generated data's tiny validation set makes the choice noise.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from memseg.baselines import evaluate_baseline
from memseg.data.datasets import category_splits
from pipelines import gain_tracking, report, schema, tracking
from sweeps import driver
from sweeps.spec import load_sweep_spec
from sweeps.trainable import trial_config
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.trial_record import TrialRecord, default_and_tuned, finish_trials

pytestmark = [pytest.mark.mlflow]

CATEGORY = "carpet"
TUNED = {"optim.lr": 0.054, "synthesis.perlin_threshold": 0.55}
VAL = {"t_default": 0.6, "t_tuned": 0.8}
# What the defaults trial's test measurement answers (the tuned trial's figures are on its run already).
DEFAULTS_TEST = {"test_image_auroc": 0.5, "test_pixel_auroc": 0.71, "test_pixel_aupro": 0.3}
TUNED_TEST = {"test_image_auroc": 0.9, "test_pixel_auroc": 0.83, "test_pixel_aupro": 0.4}


@dataclass
class Measurement:
    """A :data:`pipelines.tracking.TrialTestFigures` answering :data:`DEFAULTS_TEST`, recording what it was asked."""

    asked: list[str] = field(default_factory=list)

    def __call__(self, trials: Sequence[tracking.TrialToMeasure]) -> dict[tracking.TrialToMeasure, Mapping[str, float]]:
        self.asked += [t.trial_id for t in trials]
        return {t: DEFAULTS_TEST for t in trials}


def test_sweep_gain_matches_the_trials_runs_and_the_baseline(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path
) -> None:
    uri = mlflow_server.uri
    sweep_id = f"gain-{uuid.uuid4().hex[:8]}"
    spec = load_sweep_spec("smoke").with_changes({"data.root": str(synthetic_root),
                                                  "storage.path": str(tmp_path / "sweeps")})
    plan = driver.plan_sweep(spec, sweep_id, [CATEGORY])[0]
    point = plan.space.default_point()
    sweep = tracking.SweepTracking(uri, sweep_id, spec_name=spec.name, commit="abc123")
    callback = sweep.callback(plan)
    configs = default_and_tuned(point, TUNED)
    finish_trials(callback, configs, VAL, plan.step_budget, tmp_path)
    client = mlflow.MlflowClient(uri)
    tuned_run = callback.run_for(TrialRecord("t_tuned", configs["t_tuned"], ""))
    for key, value in TUNED_TEST.items():
        client.log_metric(tuned_run, key, value)
    summaries = [driver.TrialSummary(t, "finished", plan.step_budget, VAL[t], c, None) for t, c in configs.items()]
    category = driver.CategoryResult(CATEGORY, plan.experiment_path, trials=summaries, best=summaries[1])
    sweep.finalize(plan, category)
    measure = Measurement()
    parent_id = sweep.parent_run_id(plan)
    gain_tracking.record_gain_inputs(client, sweep.experiment_id, [(plan, category, parent_id)], test_figures=measure)
    assert measure.asked == ["t_default"]  # the winner's test figures come from registration, not from here
    written = report.write_sweep_report(uri, sweep_id, tmp_path / "report")

    # The expectations, read from the runs on the server.
    parent = client.get_run(parent_id)
    assert parent.data.tags[schema.TAG_DEFAULTS_TRIAL] == "t_default"
    runs = {r.data.tags[schema.TAG_TRIAL]: r.data.metrics
            for r in client.search_runs([sweep.experiment_id], f"tags.`{schema.TAG_PARENT}` = '{parent_id}'")}
    tune_metric = parent.data.tags[schema.TAG_TUNE_METRIC]
    d_val, c_val = runs["t_default"][tune_metric], runs["t_tuned"][tune_metric]
    d_test, c_test = runs["t_default"]["test_pixel_auroc"], runs["t_tuned"]["test_pixel_auroc"]
    baseline = evaluate_baseline(trial_config(plan.base_config, configs["t_default"]), device="cpu")
    for key in ("val_pixel_auroc", "test_pixel_auroc", "val_image_auroc", "test_pixel_aupro"):
        assert parent.data.metrics[f"{schema.BASELINE_PREFIX}{key}"] == pytest.approx(baseline[key], abs=1e-6), key

    # The parent run's comparison metrics (logged by the report).
    metrics = parent.data.metrics
    assert metrics[f"{schema.DEFAULTS_PREFIX}val_pixel_auroc"] == pytest.approx(d_val)
    assert metrics[f"{schema.CHOSEN_PREFIX}test_pixel_auroc"] == pytest.approx(c_test)
    assert metrics[f"{schema.GAIN_PREFIX}val_pixel_auroc"] == pytest.approx(c_val - d_val)
    assert metrics[f"{schema.GAIN_PREFIX}test_pixel_auroc"] == pytest.approx(c_test - d_test)
    assert metrics[schema.SWEEP_TRIALS] == len(runs)

    # The leaderboard CSV.
    row = pd.read_csv(written.files.csv).set_index("category").loc[CATEGORY]
    assert row["defaults_val"] == pytest.approx(100 * d_val)
    assert row["defaults_test"] == pytest.approx(100 * d_test)
    assert row["gain_test"] == pytest.approx(100 * (c_test - d_test))
    assert row["baseline_val"] == pytest.approx(100 * baseline["val_pixel_auroc"], abs=1e-4)
    assert row["baseline_test"] == pytest.approx(100 * baseline["test_pixel_auroc"], abs=1e-4)

    # The Markdown section: the ladder row, the overall line, and noise on this tiny validation set.
    markdown = written.files.markdown.read_text()
    section = markdown[markdown.index("## Sweep gain"):markdown.index("## Chosen configuration")]
    figures = [100 * baseline["val_pixel_auroc"], 100 * baseline["test_pixel_auroc"], 100 * d_val, 100 * d_test,
               100 * c_val, 100 * c_test]
    cells = " | ".join(f"{v:.2f}" for v in figures)
    assert f"| {CATEGORY} | {cells} | {100 * (c_val - d_val):+.2f} | {100 * (c_test - d_test):+.2f} | 2 |" in section
    improved = int(c_test > d_test)
    assert (f"the sweep improved pixel AUROC on test over the authors' defaults in {improved} of 1 categories, "
            f"mean {100 * (c_test - d_test):+.2f}") in section
    _, splits = category_splits(plan.base_config)
    anomalous = len(splits.val) * plan.base_config.data.val_anomalies_per_image
    assert anomalous < 10
    assert (f"{CATEGORY}: the choice over the authors' defaults is noise: the validation set has {anomalous} "
            "anomalous images (fewer than 10)") in section
