"""A stand-in for the fields of a Ray Tune ``Trial`` that the MLflow tracking callback reads.

Tests that write runs through the real callback (pipelines.tracking) against a real mlflow server
drive it with these records instead of running Tune trials, so they control the reported figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class TrialRecord:
    """The fields of a Tune ``Trial`` the tracking callback reads."""

    trial_id: str
    config: dict[str, Any]
    path: str
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0
    error_file: str | None = None

    def get_error(self) -> None:
        return None


class TrialCallback(Protocol):
    """The hooks of the tracking callback that :func:`finish_trials` drives."""

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any) -> None: ...
    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any]) -> None: ...
    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any) -> None: ...


def finish_trials(
    callback: TrialCallback, configs: Mapping[str, dict[str, Any]], scores: Mapping[str, float], step: int, folder: Path
) -> None:
    """Start, report ``val_pixel_auroc = scores[id]`` at ``step`` and complete one trial per ``configs`` entry."""
    for trial_id, config in configs.items():
        trial = TrialRecord(trial_id, config, str(folder / trial_id))
        callback.on_trial_start(0, [], trial)
        result = {"step": step, "val_pixel_auroc": scores[trial_id], "best_val_pixel_auroc": scores[trial_id]}
        callback.on_trial_result(0, [], trial, result)
        trial.last_result, trial.status = result, "TERMINATED"
        callback.on_trial_complete(0, [], trial)


def default_and_tuned(point: Mapping[str, Any], tuned: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Tune configs of two trials: ``t_default`` at the space's default ``point`` and ``t_tuned`` with
    ``tuned`` on top (an SGD sweep: the conditional ``optim.lr[sgd]`` carries the learning rate)."""
    return {
        "t_default": {**point, "optim.lr": point["optim.lr[sgd]"]},
        "t_tuned": {**point, **tuned, "optim.lr[sgd]": tuned["optim.lr"]},
    }
