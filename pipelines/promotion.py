"""The promotion gate: may the ``challenger`` version of a category replace its ``champion``?

Two halves, kept apart so that the rule is testable without MLflow (style guide 8.1):

* :func:`decide` is pure: it compares two metric dicts measured on the SAME held-out data under a
  :class:`PromotionPolicy` and returns a :class:`Decision` (promote or not, and why).
* :func:`promote_category` is the MLflow side effect: it evaluates both versions on the gate data
  (see :class:`PromotionPolicy.data`), calls :func:`decide`, writes the decision and
  both sets of figures as version tags, and moves the ``champion`` alias. Stages are never touched
  (deprecated since MLflow 2.9; platform notes 2.5).

All metrics in the gate are "higher is better" (AUROC, AUPRO, F1-max), so the rule is one-sided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memseg.errors import ConfigError
from memseg.metrics import keys

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "gate."


class PromotionPolicy(BaseModel):
    """How much better a challenger must be, and what it must not break.

    Metric names are the unprefixed keys of :mod:`memseg.metrics.keys` (``pixel_auroc``): both
    models are measured afresh on the gate data, so no ``val_``/``test_`` prefix applies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(keys.PIXEL_AUROC, description="Primary metric the challenger must improve.")
    margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Challenger must beat the champion by MORE than this on `metric`."
    )
    guard_metrics: tuple[str, ...] = Field(
        (keys.IMAGE_AUROC, keys.PIXEL_AUPRO), description="Metrics that must not regress beyond `guard_tolerance`."
    )
    guard_tolerance: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest drop of a guard metric (absolute) that is still accepted."
    )
    floor: float = Field(
        0.5, ge=0.0, le=1.0, description="A category's first model becomes champion only if `metric` >= floor."
    )
    data: str = Field(
        "val",
        description="Gate data: 'val' = held-out train/good images with fixed-seed synthetic anomalies that "
        "neither model trained on or kept in memory (leakage-free, default); 'test' = the test split.",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _check_metric(value)

    @field_validator("guard_metrics")
    @classmethod
    def _known_guards(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_metric(v) for v in value)

    @field_validator("data")
    @classmethod
    def _known_data(cls, value: str) -> str:
        if value not in ("val", "test"):
            msg = f"data must be 'val' or 'test', got {value!r}"
            raise ValueError(msg)
        return value


GATE_METRICS = (keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO, keys.IMAGE_F1_MAX, keys.PIXEL_F1_MAX)


def _check_metric(name: str) -> str:
    if name not in GATE_METRICS:
        msg = f"unknown gate metric {name!r} (valid: {', '.join(GATE_METRICS)})"
        raise ValueError(msg)
    return name


def make_policy(**overrides: Any) -> PromotionPolicy:
    """A policy with ``None`` overrides dropped; invalid values raise :class:`ConfigError` naming the key."""
    from pydantic import ValidationError

    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return PromotionPolicy(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"promotion.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        )
        raise ConfigError(problems) from None


@dataclass(frozen=True)
class Decision:
    """The outcome of the gate for one challenger.

    Attributes:
        promote: move ``champion`` to the challenger.
        reason: one human sentence; printed and stored as a tag.
        metric: the primary metric compared.
        challenger_value / champion_value: its values (champion ``None`` when there is none yet).
        delta: challenger - champion (``None`` without a champion).
        regressions: guard metric -> drop, for every guard that dropped beyond the tolerance.
    """

    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None
    delta: float | None
    regressions: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "refused"

    def as_tags(self) -> dict[str, str]:
        """The decision as flat string tags (the figures themselves are tagged separately)."""
        tags = {
            f"{TAG_PREFIX}decision": self.verdict,
            f"{TAG_PREFIX}reason": self.reason,
            f"{TAG_PREFIX}metric": self.metric,
        }
        if self.delta is not None:
            tags[f"{TAG_PREFIX}delta"] = f"{self.delta:.6f}"
        return tags


def decide(
    challenger: Mapping[str, float], champion: Mapping[str, float] | None, policy: PromotionPolicy
) -> Decision:
    """Apply the gate rule.

    Rule: without a champion, promote iff ``challenger[metric] >= floor``. With one, promote iff
    ``challenger[metric] - champion[metric] > margin`` and no guard metric dropped by more than
    ``guard_tolerance``. NaN values (e.g. AUROC on data with a single class) never pass.

    Args:
        challenger: metrics of the candidate on the gate data.
        champion: metrics of the current champion on the SAME data, or ``None``.
        policy: thresholds.

    Raises:
        ConfigError: a metric the policy needs is missing from either dict.
    """
    needed = (policy.metric, *policy.guard_metrics) if champion is not None else (policy.metric,)
    for who, metrics in (("challenger", challenger), ("champion", champion)):
        if metrics is None:
            continue
        missing = [m for m in needed if m not in metrics]
        if missing:
            msg = f"promotion: {who} metrics lack {missing} (have {sorted(metrics)})"
            raise ConfigError(msg)

    value = float(challenger[policy.metric])
    if champion is None:
        ok = value >= policy.floor  # False for NaN
        reason = (
            f"first model: {policy.metric}={value:.4f} {'>=' if ok else '<'} floor {policy.floor:.4f}"
        )
        return Decision(ok, reason, policy.metric, value, None, None)

    base = float(champion[policy.metric])
    delta = value - base
    regressions = {}
    for guard in policy.guard_metrics:
        drop = float(champion[guard]) - float(challenger[guard])
        if not drop <= policy.guard_tolerance:  # NaN counts as a regression
            regressions[guard] = drop
    improved = delta > policy.margin
    if improved and not regressions:
        reason = f"{policy.metric} {value:.4f} vs {base:.4f}: +{delta:.4f} > margin {policy.margin:.4f}"
        return Decision(True, reason, policy.metric, value, base, delta)
    parts = []
    if not improved:
        parts.append(f"{policy.metric} {value:.4f} vs {base:.4f}: {delta:+.4f} not > margin {policy.margin:.4f}")
    if regressions:
        parts.append(
            "guard regression: "
            + ", ".join(f"{g} -{d:.4f} > tolerance {policy.guard_tolerance:.4f}" for g, d in regressions.items())
        )
    return Decision(False, "; ".join(parts), policy.metric, value, base, delta, regressions)


def figure_tags(role: str, metrics: Mapping[str, float]) -> dict[str, str]:
    """``{"gate.<role>.<metric>": "0.987654"}`` for every gate metric present."""
    return {f"{TAG_PREFIX}{role}.{k}": f"{float(v):.6f}" for k, v in metrics.items() if k in GATE_METRICS}
