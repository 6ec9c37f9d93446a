"""Rebuilding an Optuna study from MLflow-style trial records, and drawing it."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipelines.sweep_plots import FAIL, PRUNED, TrialRecord, build_study, infer_distributions, parse_param, plot_study


def _records() -> list[TrialRecord]:
    out = []
    for i in range(6):
        params = {
            "optim.lr": str(0.001 * 10 ** (i % 3)),  # 0.001 .. 0.1: log range
            "model.memory_size": str(10 + i),
            "optim.optimizer": "sgd" if i % 2 else "adamw",
            "train.steps": "30",  # constant: not swept
        }
        out.append(TrialRecord(i, params, 0.5 + 0.05 * i, intermediate={10: 0.4, 20: 0.5 + 0.05 * i}))
    out.append(TrialRecord(6, {**out[0].params}, None, state=FAIL))
    out.append(TrialRecord(7, {**out[1].params}, 0.3, state=PRUNED))
    return out


def test_parse_param() -> None:
    assert parse_param("3") == 3 and parse_param("0.5") == 0.5
    assert parse_param("True") is True and parse_param("None") is None and parse_param("sgd") == "sgd"


def test_infer_distributions_keeps_swept_params_only() -> None:
    d = infer_distributions(_records())
    assert set(d) == {"optim.lr", "model.memory_size", "optim.optimizer"}
    assert d["optim.lr"] == FloatDistribution(0.001, 0.1, log=True)
    assert d["model.memory_size"] == IntDistribution(10, 15)
    assert isinstance(d["optim.optimizer"], CategoricalDistribution)


def test_build_study_states_and_best() -> None:
    study = build_study(_records(), study_name="s-bottle")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 6
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.PRUNED) == 1
    assert study.best_trial.number == 5
    assert study.best_value == pytest.approx(0.75)
    assert study.best_trial.params["model.memory_size"] == 15
    assert study.best_trial.intermediate_values == {10: 0.4, 20: pytest.approx(0.75)}


def test_plot_study_writes_three_readable_images(tmp_path: Path) -> None:
    files = plot_study(build_study(_records()), tmp_path, metric="val_pixel_auroc")
    assert sorted(f.stem for f in files) == ["optimization_history", "parallel_coordinate", "param_importances"]
    for f in files:
        if f.suffix == ".png":
            image = cv2.imread(str(f))
            assert image is not None and image.shape[0] > 100


def test_plot_study_with_one_trial_skips_what_it_cannot_draw(tmp_path: Path) -> None:
    files = plot_study(build_study(_records()[:1]), tmp_path, metric="m")
    assert [f.stem for f in files] == ["optimization_history"]
