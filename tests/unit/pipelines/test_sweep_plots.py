"""Rebuilding an Optuna study from MLflow-style trial records, and drawing it."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipelines.sweep_plots import (
    FAIL,
    HISTORY,
    IMPORTANCES,
    MIN_TRIALS_FOR_IMPORTANCES,
    PARALLEL,
    PRUNED,
    TrialRecord,
    build_study,
    importances_withheld,
    infer_distributions,
    parse_param,
    plot_study,
)


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


def _many(n: int) -> list[TrialRecord]:
    """``n`` finished trials over two swept params, the score rising with the learning rate."""
    return [
        TrialRecord(i, {"optim.lr": str(0.001 * (1 + i)), "model.memory_size": str(10 + i % 3)}, 0.5 + 0.01 * i)
        for i in range(n)
    ]


def test_plot_study_with_enough_trials_draws_three_readable_images_with_their_trial_count(tmp_path: Path) -> None:
    trials = [*_many(MIN_TRIALS_FOR_IMPORTANCES), TrialRecord(99, _many(1)[0].params, None, state=FAIL)]
    plots = plot_study(build_study(trials), tmp_path, metric="val_pixel_auroc")
    assert [p.kind for p in plots] == [HISTORY, IMPORTANCES, PARALLEL]
    for plot in plots:
        assert plot.path is not None and not plot.reason
        assert plot.trials == MIN_TRIALS_FOR_IMPORTANCES + 1 and plot.finished == MIN_TRIALS_FOR_IMPORTANCES
        assert plot.caption.endswith(f", {MIN_TRIALS_FOR_IMPORTANCES} finished trials of {MIN_TRIALS_FOR_IMPORTANCES + 1}")
        if plot.path.suffix == ".png":
            image = cv2.imread(str(plot.path))
            assert image is not None and image.shape[0] > 100


def test_the_plot_titles_name_the_trial_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    titles: list[str] = []
    save = Figure.savefig

    def record(fig: Figure, *args: object, **kwargs: object) -> None:
        titles.extend(ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right") if ax.get_title(loc))
        save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)  # reads the figure; the file is still written
    plots = plot_study(build_study(_many(12)), tmp_path, metric="m")
    assert sorted(titles) == sorted(p.caption for p in plots)  # one title each: ours, not printed over Optuna's
    assert all("12 finished trials" in p.caption for p in plots)


def test_below_the_minimum_importances_are_a_sentence_not_a_picture(tmp_path: Path) -> None:
    (tmp_path / "param_importances.png").write_bytes(b"stale picture from an earlier report")
    plots = plot_study(build_study(_records()), tmp_path, metric="val_pixel_auroc")
    by_kind = {p.kind: p for p in plots}
    assert by_kind[HISTORY].path is not None and by_kind[PARALLEL].path is not None
    importances = by_kind[IMPORTANCES]
    assert importances.path is None and importances.finished == 6
    assert importances.reason == importances_withheld(6)
    assert importances.caption == "parameter importances, 6 finished trials of 8"  # 1 failed, 1 pruned
    assert "not drawn below 10 finished trials (6 here)" in importances.reason
    assert not list(tmp_path.glob("param_importances.*"))


def test_plot_study_with_one_trial_skips_what_it_cannot_draw(tmp_path: Path) -> None:
    plots = plot_study(build_study(_records()[:1]), tmp_path, metric="m")
    assert [p.kind for p in plots if p.path is not None] == [HISTORY]
    assert all(p.reason for p in plots if p.path is None)
