"""The sweep-gain arithmetic and wording: differences, the overall line, the noise rule, the parent metrics, the
CSV columns, and the defaults trial found among a study's trials."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from pipelines import leaderboard, schema, sweep_gain
from pipelines.gain_tracking import defaults_trial
from pipelines.sweep_gain import SweepGain
from sweeps.driver import TrialSummary


def _gain(category: str, defaults: tuple[float, float], chosen: tuple[float, float], **kw: object) -> SweepGain:
    fields: dict[str, object] = {
        "category": category, "metric": "pixel_auroc", "chosen_trial": f"{category}_1", "defaults_trial": f"{category}_0",
        "defaults_val": defaults[0], "defaults_test": defaults[1], "chosen_val": chosen[0], "chosen_test": chosen[1],
        "baseline_val": 0.5, "baseline_test": 0.6, "trials": 2, "trial_hours": 0.25, "validation": (20, 20),
    }
    fields.update(kw)
    return SweepGain(**fields)  # type: ignore[arg-type]


def test_differences_are_chosen_minus_defaults() -> None:
    g = _gain("grid", (0.70, 0.80), (0.75, 0.78))
    assert g.gain_val == pytest.approx(0.05)
    assert g.gain_test == pytest.approx(-0.02)


def test_the_overall_line_counts_improved_categories_and_the_mean_test_gain() -> None:
    gains = [_gain("grid", (0.70, 0.80), (0.75, 0.90)), _gain("tile", (0.70, 0.80), (0.75, 0.70)),
             _gain("wood", (0.70, 0.80), (0.75, 0.86))]
    lines = sweep_gain.summary_lines(gains)
    # (+10 - 10 + 6) / 3 = +2.00
    assert lines[0] == "the sweep improved pixel AUROC on test over the authors' defaults in 2 of 3 categories, mean +2.00"
    assert lines[1] == "mean val pixel AUROC: training-free 50.00 -> authors' defaults 70.00 -> sweep winner 75.00"
    assert lines[2] == "mean test pixel AUROC: training-free 60.00 -> authors' defaults 80.00 -> sweep winner 82.00"
    assert lines[3] == "cost: 6 trials, 0.750 trial hours"
    assert lines[-1] == sweep_gain.NOISE_RULE


def test_a_category_without_both_test_figures_is_left_out_of_the_count() -> None:
    gains = [_gain("grid", (0.70, 0.80), (0.75, 0.90)), _gain("tile", (0.70, math.nan), (0.75, 0.70))]
    assert sweep_gain.summary_lines(gains)[0].endswith("in 1 of 1 categories, mean +10.00")


def test_few_anomalous_validation_images_make_the_choice_noise() -> None:
    g = _gain("grid", (0.70, 0.80), (0.75, 0.90), validation=(2, 2))
    assert g.noise_reason() == "the validation set has 2 anomalous images (fewer than 10)"
    assert "grid: the choice over the authors' defaults is noise: the validation set has 2 anomalous images" \
        in "\n".join(sweep_gain.summary_lines([g]))


def test_a_difference_below_one_swapped_pair_is_noise() -> None:
    # 10 good x 10 anomalous: one pair is 1 % of an image AUROC; 0.5 % cannot be told apart.
    assert _gain("grid", (0.700, 0.8), (0.705, 0.9), validation=(10, 10)).noise_reason() == (
        "the validation difference (+0.50) is smaller than one good/anomalous pair ranked the other way (1.00)")
    assert _gain("grid", (0.70, 0.8), (0.75, 0.9), validation=(10, 10)).noise_reason() == ""


def test_no_noise_claim_when_the_defaults_won_or_the_size_is_unknown() -> None:
    assert _gain("grid", (0.7, 0.8), (0.7, 0.8), chosen_trial="grid_0", validation=(2, 2)).noise_reason() == ""
    assert _gain("grid", (0.7, 0.8), (0.75, 0.9), validation=None).noise_reason() == ""


def test_parent_metrics_are_named_in_the_schema_and_skip_missing_figures() -> None:
    g = _gain("grid", (0.70, math.nan), (0.75, 0.90))
    assert g.parent_metrics() == {
        f"{schema.DEFAULTS_PREFIX}val_pixel_auroc": 0.70,
        f"{schema.CHOSEN_PREFIX}val_pixel_auroc": 0.75,
        f"{schema.CHOSEN_PREFIX}test_pixel_auroc": 0.90,
        f"{schema.GAIN_PREFIX}val_pixel_auroc": pytest.approx(0.05),
        schema.SWEEP_TRIALS: 2.0,
        schema.SWEEP_TRIAL_HOURS: 0.25,
    }


def test_the_leaderboard_csv_and_markdown_carry_the_gain(tmp_path: Path) -> None:
    results = [
        leaderboard.CategoryResult("grid", gain=_gain("grid", (0.70, 0.80), (0.75, 0.90), validation=(2, 2))),
        leaderboard.CategoryResult("tile"),
    ]
    files = leaderboard.write_report(results, tmp_path, title="t")
    table = pd.read_csv(files.csv).set_index("category")
    assert table.loc["grid", "defaults_test"] == pytest.approx(80.0)
    assert table.loc["grid", "gain_test"] == pytest.approx(10.0)
    assert table.loc["grid", "baseline_val"] == pytest.approx(50.0)
    assert table.loc["grid", "gain_noise"].startswith("the validation set has 2 anomalous images")
    assert math.isnan(table.loc["tile", "gain_test"])
    assert table.loc["mean", "gain_test"] == pytest.approx(10.0)
    markdown = files.markdown.read_text()
    assert "## Sweep gain" in markdown
    assert "| grid | 50.00 | 60.00 | 70.00 | 80.00 | 75.00 | 90.00 | +5.00 | +10.00 | 2 | 0.250 | grid_0 | grid_1 |" \
        in markdown
    assert "gain_test" not in markdown.split("## Sweep gain")[0]  # not a column of the main table
    assert "<h2>Sweep gain</h2>" in files.html.read_text()


def _trial(trial_id: str, params: dict[str, object]) -> TrialSummary:
    return TrialSummary(trial_id, "finished", 10, 0.5, params, None)  # type: ignore[arg-type]


def test_the_defaults_trial_is_the_first_whose_config_holds_the_default_point() -> None:
    point = {"optim.lr[sgd]": 0.04, "model.memory_size": 8}
    trials = [
        _trial("a", {"optim.lr[sgd]": 0.054, "model.memory_size": 8, "optim.lr": 0.054}),
        _trial("b", {"optim.lr[sgd]": 0.04, "model.memory_size": 8, "optim.lr": 0.04}),
        _trial("c", {"optim.lr[sgd]": 0.04, "model.memory_size": 8, "optim.lr": 0.04}),
    ]
    found = defaults_trial(trials, point)
    assert found is not None and found.trial_id == "b"
    assert defaults_trial(trials[:1], point) is None
    assert defaults_trial([_trial("d", {"optim.lr[sgd]": 0.04})], point) is None  # a missing key is no match
