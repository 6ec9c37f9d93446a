"""Did the sweep pay off: a training-free baseline, the authors' defaults and the chosen trial, per category.

Pure: :class:`SweepGain` holds one category's figures (fractions in [0, 1], NaN where missing), as the
report reads them from MLflow (:mod:`pipelines.report`), and this module turns them into the report's
"Sweep gain" section, the leaderboard CSV's columns and the parent run's metrics (names in
:mod:`pipelines.schema`). docs/report.md, "Sweep gain", describes the section and its rules.

The compared figure is the category's selection metric: on validation its best-so-far value (what
ranked the trials; for the baseline, its single evaluation), on test the same metric of the trial's best
checkpoint. The authors' defaults are the sweep's first trial (``search.defaults_first``).

When the validation set cannot tell two trials apart, the choice between them is noise:
:func:`noise_reason` says so when the validation set has fewer than :data:`MIN_VAL_ANOMALOUS`
anomalous images, or when the validation difference is smaller than one good/anomalous pair ranked
the other way (1 / (good x anomalous), the step of an image AUROC on that set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipelines import schema

MIN_VAL_ANOMALOUS = 10
NOISE_RULE = (
    f"the choice is called noise when the validation set has fewer than {MIN_VAL_ANOMALOUS} anomalous images, "
    "or when the validation difference is smaller than one good/anomalous pair ranked the other way "
    "(1 / (good x anomalous images))"
)
# The leaderboard CSV's columns (percent, like its other metric columns); "gain_noise" is the reason text.
CSV_COLUMNS = ("baseline_val", "baseline_test", "defaults_val", "defaults_test", "gain_val", "gain_test",
               "gain_noise")
LABELS = {"pixel_auroc": "pixel AUROC", "image_auroc": "image AUROC", "pixel_aupro": "pixel AUPRO"}


@dataclass(frozen=True)
class SweepGain:
    """One category's ladder: training-free baseline -> authors' defaults -> chosen trial.

    Attributes:
        category: the category.
        metric: the selection metric without its split prefix (``pixel_auroc``).
        chosen_trial: the winning trial's id.
        defaults_trial: the trial that ran the authors' defaults (None when no trial did).
        baseline_val / baseline_test: the training-free baseline's figures.
        defaults_val / defaults_test / chosen_val / chosen_test: the two trials' figures.
        trials: trials the category's study ran.
        trial_hours: their summed wall time in hours.
        validation: (good, anomalous) validation images of the chosen trial's split; None when unknown.
    """

    category: str
    metric: str
    chosen_trial: str
    defaults_trial: str | None = None
    baseline_val: float = math.nan
    baseline_test: float = math.nan
    defaults_val: float = math.nan
    defaults_test: float = math.nan
    chosen_val: float = math.nan
    chosen_test: float = math.nan
    trials: int = 0
    trial_hours: float = math.nan
    validation: tuple[int, int] | None = None

    @property
    def gain_val(self) -> float:
        return self.chosen_val - self.defaults_val

    @property
    def gain_test(self) -> float:
        return self.chosen_test - self.defaults_test

    @property
    def label(self) -> str:
        return LABELS.get(self.metric, self.metric)

    def noise_reason(self) -> str:
        """Why the validation set cannot tell the chosen trial from the defaults ("" when it can, or unknown)."""
        if self.validation is None or self.defaults_trial in (None, self.chosen_trial):
            return ""
        good, anomalous = self.validation
        if anomalous < MIN_VAL_ANOMALOUS:
            return f"the validation set has {anomalous} anomalous images (fewer than {MIN_VAL_ANOMALOUS})"
        step = 1.0 / (good * anomalous) if good * anomalous else math.inf
        if math.isfinite(self.gain_val) and abs(self.gain_val) < step:
            return (f"the validation difference ({100 * self.gain_val:+.2f}) is smaller than one "
                    f"good/anomalous pair ranked the other way ({100 * step:.2f})")
        return ""

    def parent_metrics(self) -> dict[str, float]:
        """The parent run's metrics of the comparison (the finite ones), named in :mod:`pipelines.schema`."""
        val, test = f"val_{self.metric}", f"test_{self.metric}"
        figures = {
            f"{schema.DEFAULTS_PREFIX}{val}": self.defaults_val,
            f"{schema.DEFAULTS_PREFIX}{test}": self.defaults_test,
            f"{schema.CHOSEN_PREFIX}{val}": self.chosen_val,
            f"{schema.CHOSEN_PREFIX}{test}": self.chosen_test,
            f"{schema.GAIN_PREFIX}{val}": self.gain_val,
            f"{schema.GAIN_PREFIX}{test}": self.gain_test,
            schema.SWEEP_TRIALS: float(self.trials),
            schema.SWEEP_TRIAL_HOURS: self.trial_hours,
        }
        return {k: v for k, v in figures.items() if math.isfinite(v)}

    def csv_fields(self) -> dict[str, object]:
        """:data:`CSV_COLUMNS` in percent."""
        return {
            "baseline_val": 100 * self.baseline_val, "baseline_test": 100 * self.baseline_test,
            "defaults_val": 100 * self.defaults_val, "defaults_test": 100 * self.defaults_test,
            "gain_val": 100 * self.gain_val, "gain_test": 100 * self.gain_test, "gain_noise": self.noise_reason(),
        }


def baseline_figures(metrics: Mapping[str, float], metric: str) -> tuple[float, float]:
    """(validation, test) figure of ``metric`` among a parent run's ``baseline.*`` metrics (NaN where absent)."""
    return (metrics.get(f"{schema.BASELINE_PREFIX}val_{metric}", math.nan),
            metrics.get(f"{schema.BASELINE_PREFIX}test_{metric}", math.nan))


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.2f}"


def _delta(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:+.2f}"


HEADERS = ("category", "training-free val", "training-free test", "defaults val", "defaults test", "chosen val",
           "chosen test", "gain val", "gain test", "trials", "trial h", "defaults trial", "chosen trial")


def table_rows(gains: Sequence[SweepGain]) -> list[list[str]]:
    """One row per category, in :data:`HEADERS` order (figures in %, gain = chosen minus defaults)."""
    return [
        [g.category, _pct(g.baseline_val), _pct(g.baseline_test), _pct(g.defaults_val), _pct(g.defaults_test),
         _pct(g.chosen_val), _pct(g.chosen_test), _delta(g.gain_val), _delta(g.gain_test), str(g.trials),
         "-" if not math.isfinite(g.trial_hours) else f"{g.trial_hours:.3f}", g.defaults_trial or "none",
         g.chosen_trial]
        for g in gains
    ]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summary_lines(gains: Sequence[SweepGain]) -> list[str]:
    """The overall lines: the test gain over the defaults, the ladder's means, and which choices are noise."""
    if not gains:
        return []
    label = " / ".join(sorted({g.label for g in gains}))
    lines = []
    compared = [g for g in gains if math.isfinite(g.gain_test)]
    if compared:
        improved = sum(1 for g in compared if g.gain_test > 0)
        lines.append(f"the sweep improved {label} on test over the authors' defaults in {improved} of "
                     f"{len(compared)} categories, mean {_delta(_mean([g.gain_test for g in compared]))}")
    else:
        lines.append(f"no category has the test {label} of both the authors' defaults and the chosen trial")
    for split in ("val", "test"):
        ladder = [_mean([getattr(g, f"{who}_{split}") for g in gains]) for who in ("baseline", "defaults", "chosen")]
        lines.append(f"mean {split} {label}: training-free {_pct(ladder[0])} -> authors' defaults "
                     f"{_pct(ladder[1])} -> sweep winner {_pct(ladder[2])}")
    lines.append(f"cost: {sum(g.trials for g in gains)} trials, "
                 f"{sum(g.trial_hours for g in gains if math.isfinite(g.trial_hours)):.3f} trial hours")
    missing = [g.category for g in gains if g.defaults_trial is None]
    if missing:
        lines.append("no authors'-defaults trial recorded (search.defaults_first: false, or a sweep recorded before "
                     f"the sweep stage tagged it) in: {', '.join(missing)}")
    same = [g.category for g in gains if g.defaults_trial is not None and g.defaults_trial == g.chosen_trial]
    if same:
        lines.append(f"the authors' defaults were chosen in: {', '.join(same)}")
    for g in gains:
        reason = g.noise_reason()
        if reason:
            lines.append(f"{g.category}: the choice over the authors' defaults is noise: {reason}")
    lines.append(NOISE_RULE)
    return lines


def markdown_lines(gains: Sequence[SweepGain]) -> list[str]:
    """The report's "Sweep gain" section in Markdown (empty without categories)."""
    if not gains:
        return []
    lines = ["## Sweep gain", "", SECTION_NOTE, "", "| " + " | ".join(HEADERS) + " |",
             "|---|" + "---:|" * (len(HEADERS) - 3) + "---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(gains)]
    lines += ["", *(f"- {line}" for line in summary_lines(gains))]
    return lines


SECTION_NOTE = (
    "The selection metric in %: training-free = nearest memory feature with the same backbone, memory images, "
    "validation set and test split as the authors'-defaults trial, no training; defaults = the sweep's first "
    "trial, which runs the authors' defaults; chosen = the trial the sweep picked on validation; gain = chosen "
    "minus defaults; val = the best-so-far validation figure that ranked the trials; trial h = summed trial "
    "wall time."
)
