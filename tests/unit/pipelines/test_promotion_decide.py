"""The pure promotion rule: margin, guards, floor, NaN handling."""

from __future__ import annotations

import math

import pytest

from memseg.errors import ConfigError
from pipelines.promotion import PromotionPolicy, decide, figure_tags, make_policy

POLICY = PromotionPolicy(metric="pixel_auroc", margin=0.01, guard_metrics=("image_auroc",), guard_tolerance=0.02)


def m(pixel: float, image: float = 0.9) -> dict[str, float]:
    return {"pixel_auroc": pixel, "image_auroc": image}


def test_first_model_passes_floor() -> None:
    d = decide(m(0.7), None, POLICY)
    assert d.promote and d.champion_value is None and d.delta is None
    assert "floor" in d.reason


def test_first_model_below_floor_refused() -> None:
    d = decide(m(0.49), None, POLICY)
    assert not d.promote
    assert "0.4900 < floor 0.5000" in d.reason


def test_better_by_more_than_margin_promoted() -> None:
    d = decide(m(0.95), m(0.93), POLICY)
    assert d.promote
    assert d.delta == pytest.approx(0.02)
    assert d.as_tags()["gate.decision"] == "promoted"


def test_better_but_within_margin_refused() -> None:
    d = decide(m(0.935), m(0.93), POLICY)
    assert not d.promote
    assert "not > margin" in d.reason


def test_worse_refused() -> None:
    d = decide(m(0.80), m(0.93), POLICY)
    assert not d.promote
    assert d.delta == pytest.approx(-0.13)
    assert d.as_tags()["gate.decision"] == "refused"


def test_guard_regression_blocks_an_improvement() -> None:
    d = decide(m(0.99, image=0.80), m(0.90, image=0.85), POLICY)
    assert not d.promote
    assert d.regressions == {"image_auroc": pytest.approx(0.05)}
    assert "guard regression" in d.reason


def test_guard_drop_within_tolerance_is_fine() -> None:
    d = decide(m(0.99, image=0.84), m(0.90, image=0.85), POLICY)
    assert d.promote and d.regressions == {}


def test_nan_never_passes() -> None:
    assert not decide(m(math.nan), None, POLICY).promote
    assert not decide(m(math.nan), m(0.9), POLICY).promote
    d = decide(m(0.99, image=math.nan), m(0.9), POLICY)
    assert not d.promote and "image_auroc" in d.regressions


def test_missing_metric_counts_as_nan() -> None:
    d = decide({"pixel_auroc": 0.95}, m(0.8), POLICY)
    assert not d.promote and "image_auroc" in d.regressions
    assert not decide({}, None, POLICY).promote


def test_policy_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match="promotion.metric"):
        make_policy(metric="accuracy")
    with pytest.raises(ConfigError, match="promotion.margin"):
        make_policy(margin=-1)
    assert make_policy(margin=None).margin == PromotionPolicy().margin


def test_figure_tags_keep_gate_metrics_only() -> None:
    tags = figure_tags("champion", {"pixel_auroc": 0.5, "loss": 3.0})
    assert tags == {"gate.champion.pixel_auroc": "0.500000"}
