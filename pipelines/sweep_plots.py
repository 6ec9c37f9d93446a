"""Optuna's pictures of a finished sweep, rebuilt after the fact from MLflow runs.

Inside Ray Tune the Optuna study lives in the driver's memory, so it is gone
once the sweep ends. The child runs in MLflow hold everything the plots need: the trial's params
and its metric. :func:`build_study` puts them back into an in-memory study with
``optuna.create_study`` + ``study.add_trial(optuna.trial.create_trial(...))``; :func:`plot_study`
draws the optimisation history, the parameter importances and a parallel-coordinates view.

Rendering: ``optuna.visualization`` (plotly) is used when plotly is installed and writes HTML;
otherwise ``optuna.visualization.matplotlib`` writes PNGs (plotly is not a dependency here).
Importances use PED-ANOVA, which needs only numpy (fANOVA, Optuna's default, needs scikit-learn,
a test-only dependency of this project). They are drawn only from :data:`MIN_TRIALS_FOR_IMPORTANCES`
finished trials on; below that :func:`plot_study` returns a sentence saying so instead of the picture.
Every picture's title names the number of trials it is drawn from.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import TrialState

log = logging.getLogger(__name__)

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"
_STATES = {COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAIL: TrialState.FAIL}
# A float range this wide (max/min) is drawn on a log axis, as a log-uniform space would be.
_LOG_RATIO = 100.0
# Below this many finished trials, importances rank noise: with 2 trials every swept param got the same
# share (0.17 each), which reads as a finding. Ten is where the top and bottom of PED-ANOVA's quantile
# split hold a few trials each.
MIN_TRIALS_FOR_IMPORTANCES = 10

HISTORY, IMPORTANCES, PARALLEL = "optimization_history", "param_importances", "parallel_coordinate"
TITLES = {HISTORY: "optimisation history", IMPORTANCES: "parameter importances", PARALLEL: "parallel coordinates"}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow remembers it.

    Attributes:
        number: order of the trial (0-based), e.g. by start time.
        params: its configuration, dotted names; values may be MLflow's strings.
        value: the objective (the selection metric); ``None`` for failed trials.
        state: ``COMPLETE``, ``PRUNED`` (stopped early by the scheduler) or ``FAIL``.
        intermediate: step -> metric, the learning curve.
    """

    number: int
    params: Mapping[str, Any]
    value: float | None
    state: str = COMPLETE
    intermediate: Mapping[int, float] = field(default_factory=dict)


def parse_param(text: Any) -> Any:
    """An MLflow param string back to a Python scalar: ``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"True"`` -> True."""
    if not isinstance(text, str):
        return text
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def infer_distributions(trials: Sequence[TrialRecord]) -> dict[str, BaseDistribution]:
    """Distributions of the params that VARY across trials (constant params were not swept).

    Numbers become Int/Float ranges spanning the observed values (log when they span >= 100x);
    everything else a categorical over the observed values.
    """
    values: dict[str, list[Any]] = {}
    for t in trials:
        for k, v in t.params.items():
            values.setdefault(k, []).append(parse_param(v))
    out: dict[str, BaseDistribution] = {}
    for name, vals in sorted(values.items()):
        distinct = set(map(repr, vals))
        if len(distinct) < 2 or len(vals) < len(trials):
            continue
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
        if numeric and all(isinstance(v, int) for v in vals):
            out[name] = IntDistribution(min(vals), max(vals))
        elif numeric and all(math.isfinite(v) for v in vals):
            low, high = float(min(vals)), float(max(vals))
            out[name] = FloatDistribution(low, high, log=low > 0 and high / low >= _LOG_RATIO)
        else:
            out[name] = CategoricalDistribution(sorted(set(vals), key=repr))
    return out


def build_study(
    trials: Sequence[TrialRecord],
    *,
    direction: Literal["maximize", "minimize"] = "maximize",
    distributions: Mapping[str, BaseDistribution] | None = None,
    study_name: str = "sweep",
) -> optuna.Study:
    """An in-memory study holding ``trials`` (only the swept params, see :func:`infer_distributions`)."""
    dists = dict(distributions) if distributions is not None else infer_distributions(trials)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per report
    try:
        study = optuna.create_study(direction=direction, study_name=study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in sorted(trials, key=lambda t: t.number):
        state = _STATES[t.state]
        value = t.value if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state, value = TrialState.FAIL, None
        params = {k: parse_param(t.params[k]) for k in dists if k in t.params}
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions={k: dists[k] for k in params},
                intermediate_values={int(s): float(v) for s, v in t.intermediate.items() if math.isfinite(v)},
            )
        )
    return study


@dataclass(frozen=True)
class StudyPlot:
    """One of a study's pictures, or the sentence that stands in for it.

    Attributes:
        kind: :data:`HISTORY`, :data:`IMPORTANCES` or :data:`PARALLEL`.
        trials: the study's trials, all outcomes.
        finished: its trials with a value (COMPLETE), which the picture is drawn from.
        path: the file written (``.png``, or ``.html`` with plotly); None when not drawn.
        reason: why it is not drawn ("" when it is).
    """

    kind: str
    trials: int
    finished: int
    path: Path | None = None
    reason: str = ""

    @property
    def caption(self) -> str:
        """The picture's name and its trial count, e.g. ``parameter importances, 12 finished trials of 13``."""
        return f"{TITLES.get(self.kind, self.kind)}, {_count(self.finished, self.trials)}"


def _count(finished: int, trials: int) -> str:
    noun = "trial" if finished == 1 else "trials"
    return f"{finished} finished {noun}" + (f" of {trials}" if trials != finished else "")


def importances_withheld(finished: int) -> str:
    """Why the importances are not drawn below :data:`MIN_TRIALS_FOR_IMPORTANCES` finished trials; shown
    after the plot's caption, which gives the trial count."""
    return (
        f"not drawn below {MIN_TRIALS_FOR_IMPORTANCES} finished trials ({finished} here): with so few, "
        "importances rank noise, not the parameters."
    )


def plotly_available() -> bool:
    return importlib.util.find_spec("plotly") is not None


def plot_study(study: optuna.Study, out_dir: Path, *, metric: str) -> list[StudyPlot]:
    """Optimisation history, parameter importances and parallel coordinates of ``study``.

    Importances need :data:`MIN_TRIALS_FOR_IMPORTANCES` finished trials and a swept parameter; below
    that the entry carries :func:`importances_withheld`'s sentence and no file (a stale picture from an
    earlier report in ``out_dir`` is removed). A plot that the data cannot support otherwise (nothing
    finished, no swept parameter) is skipped with a log line and a reason, not an error: a 2-trial smoke
    sweep still reports.

    Returns:
        One entry per picture, in the order above, each with the trial count its title names.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    swept = sorted({p for t in complete for p in t.params})
    total, finished = len(study.trials), len(complete)
    out: list[StudyPlot] = []
    plots: list[tuple[str, dict[str, Any]]] = [(HISTORY, {})]
    if finished < MIN_TRIALS_FOR_IMPORTANCES:
        out.append(StudyPlot(IMPORTANCES, total, finished, reason=importances_withheld(finished)))
    elif not swept:
        out.append(StudyPlot(IMPORTANCES, total, finished, reason="not drawn: no parameter took more than one "
                                                                  "value."))
    else:
        # The default top-10% quantile must hold at least two trials.
        q = min(0.5, max(0.1, 2.0 / finished))
        plots.append((IMPORTANCES, {"evaluator": PedAnovaImportanceEvaluator(target_quantile=q)}))
    if complete and swept:
        plots.append((PARALLEL, {}))
    else:
        out.append(StudyPlot(PARALLEL, total, finished, reason="not drawn: no finished trial, or no parameter "
                                                               "that took more than one value."))
    for entry in out:
        log.info("%s: %s", study.study_name, entry.reason)
        for stale in out_dir.glob(f"{entry.kind}.*"):
            stale.unlink()
    use_plotly = plotly_available()
    for name, kwargs in plots:
        title = StudyPlot(name, total, finished).caption
        try:
            path = _render(study, name, kwargs, out_dir, metric, use_plotly, title)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.warning("%s: plot %s skipped: %s", study.study_name, name, exc)
            out.append(StudyPlot(name, total, finished, reason=f"not drawn: {exc}"))
        else:
            out.append(StudyPlot(name, total, finished, path))
    order = [HISTORY, IMPORTANCES, PARALLEL]
    return sorted(out, key=lambda p: order.index(p.kind))


def _render(
    study: optuna.Study, name: str, kwargs: dict[str, Any], out_dir: Path, metric: str, use_plotly: bool, title: str
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if use_plotly:
            fig = getattr(optuna.visualization, f"plot_{name}")(study, target_name=metric, **kwargs)
            fig.update_layout(title_text=title)
            path = out_dir / f"{name}.html"
            fig.write_html(str(path), include_plotlyjs="cdn")
            return path
        matplotlib.use("Agg")  # headless: no display on workers or CI
        ax = getattr(optuna.visualization.matplotlib, f"plot_{name}")(study, target_name=metric, **kwargs)
        first = ax if hasattr(ax, "figure") else ax.flat[0]
        for loc in ("left", "right"):  # Optuna puts some of its titles there; ours would overprint them
            first.set_title("", loc=loc)
        first.set_title(title)
        fig = first.figure
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path
