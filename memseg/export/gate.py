"""The accuracy gate of an INT8 graph: its validation figures may drop at most a margin from fp32.

The decision uses the category's validation set only (held-out normal images with synthetic
anomalies, as training selects on); test figures may be reported beside it, never decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from memseg.metrics import keys

GATED_METRICS = (keys.PIXEL_AUROC, keys.PIXEL_AUPRO)
DEFAULT_MARGIN = 0.005


@dataclass(frozen=True)
class GateResult:
    """The gate's decision and the figures it was made on.

    Attributes:
        passed: every gated metric dropped by at most ``margin``.
        margin: the largest accepted drop.
        fp32: validation figures of the fp32 graph.
        int8: validation figures of the INT8 graph.
        drops: ``fp32 - int8`` per gated metric (negative = INT8 better).
        test_fp32, test_int8: test figures, reported beside (empty when not measured).
    """

    passed: bool
    margin: float
    fp32: dict[str, float]
    int8: dict[str, float]
    drops: dict[str, float]
    test_fp32: dict[str, float] = field(default_factory=dict)
    test_int8: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: passed, or by how much each failing metric missed the margin."""
        figures = ", ".join(
            f"{k} {self.fp32[k]:.4f} -> {self.int8[k]:.4f} (drop {self.drops[k]:+.4f})" for k in self.drops
        )
        if self.passed:
            return f"INT8 accepted (validation, margin {self.margin:g}): {figures}"
        missed = ", ".join(
            f"{k} by {self.drops[k] - self.margin:.4f}" for k in self.drops if self.drops[k] > self.margin
        )
        return f"INT8 refused: validation drop exceeds the margin {self.margin:g}: {missed} ({figures})"

    def tags(self) -> dict[str, str]:
        """The figures as flat string tags (registry tags, file metadata)."""
        out = {"int8_gate": "passed" if self.passed else "refused", "int8_gate_margin": f"{self.margin:g}"}
        for name, figures in (("val_fp32", self.fp32), ("val_int8", self.int8),
                              ("test_fp32", self.test_fp32), ("test_int8", self.test_int8)):
            out.update({f"{name}_{k}": f"{v:.6f}" for k, v in figures.items()})
        return out


def _gated(figures: Mapping[str, float]) -> dict[str, float]:
    return {k: float(figures[k]) for k in GATED_METRICS if k in figures}


def int8_gate(
    fp32: Mapping[str, float],
    int8: Mapping[str, float],
    margin: float = DEFAULT_MARGIN,
    *,
    test_fp32: Mapping[str, float] | None = None,
    test_int8: Mapping[str, float] | None = None,
) -> GateResult:
    """Compare the INT8 graph's validation figures with fp32's.

    Raises:
        ValueError: a negative margin, or a gated metric missing from either set of figures.
    """
    if margin < 0:
        msg = f"the INT8 margin must be >= 0, got {margin}"
        raise ValueError(msg)
    missing = [k for k in GATED_METRICS if k not in fp32 or k not in int8]
    if missing:
        msg = f"the INT8 gate needs {', '.join(missing)} for both graphs (validation set without anomalies?)"
        raise ValueError(msg)
    drops = {k: float(fp32[k]) - float(int8[k]) for k in GATED_METRICS}
    return GateResult(
        passed=all(d <= margin for d in drops.values()),
        margin=float(margin),
        fp32=_gated(fp32),
        int8=_gated(int8),
        drops=drops,
        test_fp32=_gated(test_fp32 or {}),
        test_int8=_gated(test_int8 or {}),
    )
