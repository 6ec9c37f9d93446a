"""Which trials the end of a study hands to the test measurement, and what comes back from it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest

from pipelines.sweep_stage import RayTestMeasurement
from pipelines.tracking import TrialToMeasure, measure_trials
from sweeps.spec import load_sweep_spec

A = TrialToMeasure("bottle", "/runs/s1/bottle", "a")
B = TrialToMeasure("bottle", "/runs/s1/bottle", "b")
C = TrialToMeasure("carpet", "/runs/s1/carpet", "a")


def test_every_trial_goes_to_one_call_and_failures_are_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[list[TrialToMeasure]] = []

    def measure(trials: Sequence[TrialToMeasure]) -> Mapping[TrialToMeasure, Mapping[str, float] | Exception]:
        calls.append(list(trials))
        return {A: {"test_pixel_auroc": 0.7}, B: FileNotFoundError("no best_model.pt under /runs/s1/bottle")}

    with caplog.at_level(logging.ERROR, logger="pipelines.tracking"):
        out = measure_trials(measure, [A, B, C])
    assert calls == [[A, B, C]]  # one batch, across categories
    assert out == {A: {"test_pixel_auroc": 0.7}}
    logged = {(r.getMessage(), r.exc_info is not None) for r in caplog.records}
    assert ("trial b (bottle): cannot measure its best checkpoint on test; left out of the val/test rank "
            "correlation", True) in logged
    assert ("trial a (carpet): cannot measure its best checkpoint on test; left out of the val/test rank "
            "correlation", False) in logged  # not answered at all


def test_nothing_to_measure_makes_no_call() -> None:
    def measure(trials: Sequence[TrialToMeasure]) -> Mapping[TrialToMeasure, Mapping[str, float] | Exception]:
        raise AssertionError(f"called with {trials}")

    assert measure_trials(measure, []) == {}


def test_a_measurement_that_fails_as_a_whole_leaves_every_trial_out(caplog: pytest.LogCaptureFixture) -> None:
    def measure(trials: Sequence[TrialToMeasure]) -> Mapping[TrialToMeasure, Mapping[str, float] | Exception]:
        raise ConnectionError("no cluster at 10.0.0.1:6379")

    with caplog.at_level(logging.ERROR, logger="pipelines.tracking"):
        assert measure_trials(measure, [A, B]) == {}
    assert any("cannot measure 2 trials on test" in r.getMessage() for r in caplog.records)


def test_the_ray_measurement_asks_for_what_a_trial_of_the_spec_gets() -> None:
    spec = load_sweep_spec("paper")
    measure = RayTestMeasurement.for_spec(spec, "http://mlflow:5000", data_root="/data/mvtec")
    assert (measure.cpu, measure.gpu) == (spec.resources.cpu, spec.resources.gpu) == (4.0, 0.5)
    assert (measure.data_root, measure.local_num_cpus) == ("/data/mvtec", spec.cluster.local_num_cpus)
    assert measure([]) == {}  # nothing to measure: no connection to Ray is made
