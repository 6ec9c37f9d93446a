"""The typed readers of what one stage wrote to MLflow for the next: a missing tag is an error naming it."""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from memseg.metrics.rank_correlation import RankCorrelation
from pipelines import schema
from pipelines.schema import GateRecord, ParentRun, RegisteredVersion, SchemaError, TrialRun

PARENT_TAGS = {
    schema.TAG_ROLE: schema.ROLE_PARENT, schema.TAG_SWEEP: "s1", schema.TAG_CATEGORY: "bottle",
    schema.TAG_TUNE_METRIC: "best_val_pixel_aupro", schema.TAG_EXPERIMENT_PATH: "/runs/s1/bottle",
    schema.TAG_FINGERPRINT: "fp", schema.TAG_SPACE: "paper",
}
VERSION_TAGS = {
    schema.TAG_SWEEP: "s1", schema.TAG_TRIAL: "t1", schema.TAG_CATEGORY: "bottle", schema.TAG_DATASET: "mvtec",
    schema.TAG_SELECTION_METRIC: "val_pixel_aupro", "val_pixel_aupro": "0.800000", "val_pixel_auroc": "0.900000",
    "test_image_auroc": "nan", "test_pixel_aupro": "0.700000",
}


def _run(run_id: str, tags: dict[str, str], status: str = "FINISHED", metrics: dict[str, float] | None = None) -> Run:
    info = RunInfo(run_id, "0", "user", status, 1000, 2000, "active")
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
                   tags=[RunTag(k, v) for k, v in tags.items()])
    return Run(info, data)


def _version(tags: dict[str, str]) -> ModelVersion:
    return ModelVersion("memseg-mvtec-bottle", "3", 0, source="models:/m-1",
                        tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_parent_run_reads_the_sweep_tags() -> None:
    parent = ParentRun.from_run(_run("p1", {**PARENT_TAGS, schema.TAG_BEST_TRIAL: "t1"}))
    assert (parent.sweep_id, parent.category, parent.experiment_path) == ("s1", "bottle", "/runs/s1/bottle")
    assert parent.selection_metric == "val_pixel_aupro" and parent.finished
    assert parent.registered_model is None
    assert not ParentRun.from_run(_run("p2", PARENT_TAGS)).finished  # no best trial yet
    assert not ParentRun.from_run(_run("p3", {**PARENT_TAGS, schema.TAG_BEST_TRIAL: "t1"}, "RUNNING")).finished


@pytest.mark.parametrize("tag", [schema.TAG_TUNE_METRIC, schema.TAG_EXPERIMENT_PATH, schema.TAG_CATEGORY])
def test_a_missing_parent_tag_names_the_run_and_the_tag(tag: str) -> None:
    tags = {k: v for k, v in PARENT_TAGS.items() if k != tag}
    with pytest.raises(SchemaError, match=rf"parent run p9 has no '{tag}' tag"):
        ParentRun.from_run(_run("p9", tags))


def test_a_tune_metric_that_is_not_a_best_val_metric_is_refused() -> None:
    with pytest.raises(SchemaError, match="p9: tune_metric='val_pixel_auroc'"):
        ParentRun.from_run(_run("p9", {**PARENT_TAGS, schema.TAG_TUNE_METRIC: "val_pixel_auroc"}))


def test_trial_run_needs_its_trial_and_parent() -> None:
    trial = TrialRun.from_run(_run("r1", {schema.TAG_TRIAL: "t1", schema.TAG_PARENT: "p1"}, metrics={"x": 1.0}))
    assert (trial.trial_id, trial.parent_run_id, trial.outcome, trial.metrics) == ("t1", "p1", None, {"x": 1.0})
    with pytest.raises(SchemaError, match="trial run r2 has no 'trial_id' tag"):
        TrialRun.from_run(_run("r2", {schema.TAG_PARENT: "p1"}))


def test_registered_version_reads_figures_and_selection_metric() -> None:
    version = RegisteredVersion.from_version(_version(VERSION_TAGS))
    assert version.selection_metric == "val_pixel_aupro" and version.gate_metric == "pixel_aupro"
    assert version.val_metrics == {"val_pixel_aupro": 0.8, "val_pixel_auroc": 0.9}
    assert set(version.test_metrics) == {"test_image_auroc", "test_pixel_aupro"}
    assert version.gate is None
    without = {k: v for k, v in VERSION_TAGS.items() if k != schema.TAG_SELECTION_METRIC}
    with pytest.raises(SchemaError, match="model version memseg-mvtec-bottle/3 has no 'selection_metric' tag"):
        RegisteredVersion.from_version(_version(without))


def test_gate_record_is_all_or_nothing() -> None:
    gate = {schema.GATE_DECISION: schema.PROMOTED, schema.GATE_REASON: "better", schema.GATE_METRIC: "pixel_aupro",
            schema.GATE_DATA: "val: 4 images", schema.GATE_DECIDED_AT: "now", schema.GATE_DELTA: "0.100000",
            schema.gate_figure_tag(schema.CHALLENGER, "pixel_aupro"): "0.900000",
            schema.gate_figure_tag(schema.CHAMPION, "pixel_aupro"): "0.800000"}
    record = RegisteredVersion.from_version(_version({**VERSION_TAGS, **gate})).gate
    assert isinstance(record, GateRecord) and record.promoted and record.delta == pytest.approx(0.1)
    assert record.value(schema.CHALLENGER) == pytest.approx(0.9) and record.value(schema.CHAMPION) == pytest.approx(0.8)
    partial = {k: v for k, v in gate.items() if k != schema.GATE_REASON}
    with pytest.raises(SchemaError, match="'gate.reason'"):
        RegisteredVersion.from_version(_version({**VERSION_TAGS, **partial}))


def test_val_test_metrics_pair_the_selection_metric_with_its_test_counterpart_and_aupro() -> None:
    assert schema.val_test_metrics("val_pixel_auroc") == ("test_pixel_auroc", "test_pixel_aupro")
    assert schema.val_test_metrics("val_image_auroc") == ("test_image_auroc", "test_pixel_aupro")
    assert schema.val_test_metrics("val_pixel_aupro") == ("test_pixel_aupro",)


def _trial(run_id: str, metrics: dict[str, float]) -> TrialRun:
    return TrialRun.from_run(_run(run_id, {schema.TAG_TRIAL: run_id, schema.TAG_PARENT: "p1"}, metrics=metrics))


def test_val_test_correlation_reads_the_tune_metric_and_the_test_figure_of_each_trial() -> None:
    trials = [
        _trial("a", {"best_val_pixel_auroc": 0.9, "val_pixel_auroc": 0.1, "test_pixel_auroc": 0.8}),
        _trial("b", {"best_val_pixel_auroc": 0.7, "test_pixel_auroc": 0.9}),
        _trial("c", {"best_val_pixel_auroc": 0.5, "test_pixel_auroc": 0.6}),
        _trial("d", {"best_val_pixel_auroc": 0.3}),  # not measured on test: left out of n
        _trial("e", {"test_pixel_auroc": 0.1}),  # no validation figure: not a pair at all
    ]
    pairs = schema.val_test_pairs(trials, "best_val_pixel_auroc", "test_pixel_auroc")
    assert pairs[:3] == [(0.9, 0.8), (0.7, 0.9), (0.5, 0.6)]
    assert len(pairs) == 4 and pairs[3][0] == 0.3 and math.isnan(pairs[3][1])
    corr = schema.val_test_correlation(trials, "best_val_pixel_auroc", "test_pixel_auroc")
    # ranks: val (3, 2, 1), test (2, 3, 1) -> rho = 1 - 6 * (1 + 1 + 0) / (3 * 8) = 0.5
    assert corr.rho == pytest.approx(0.5) and corr.n == 3 and corr.reason == ""
    short = schema.val_test_correlation(trials[:2], "best_val_pixel_auroc", "test_pixel_auroc")
    assert math.isnan(short.rho) and short.n == 2
    assert short.reason == "fewer than 3 trials with a validation figure: 2"


def test_parent_run_reads_its_val_test_correlations_and_a_reason_wins_over_a_stale_rho() -> None:
    metrics = {"val_test_spearman.test_pixel_auroc": 0.4, "val_test_trials.test_pixel_auroc": 5.0,
               "val_test_spearman.test_pixel_aupro": 0.2, "val_test_trials.test_pixel_aupro": 4.0}
    tags = {**PARENT_TAGS, "val_test_reason.test_pixel_aupro": "the second side is constant over the 4 pairs"}
    parent = ParentRun.from_run(_run("p1", tags, metrics=metrics))
    assert parent.val_test["test_pixel_auroc"] == RankCorrelation(0.4, 5)
    aupro = parent.val_test["test_pixel_aupro"]
    assert math.isnan(aupro.rho) and aupro.n == 4 and aupro.reason.startswith("the second side")
    assert ParentRun.from_run(_run("p2", PARENT_TAGS)).val_test == {}
    without_n = {"val_test_spearman.test_pixel_auroc": 0.4}
    with pytest.raises(SchemaError, match="parent run p3 .* no val_test_trials.test_pixel_auroc metric"):
        ParentRun.from_run(_run("p3", PARENT_TAGS, metrics=without_n))
