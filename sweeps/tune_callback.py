"""The bridge from memseg's training loop to Ray Tune: every evaluation becomes one ``ray.tune.report``.

Implements :class:`memseg.training.callbacks.TrainingCallback`. Only ``ray.tune.*`` is used: with Ray
2.60's Train V2, ``ray.train.report`` raises inside a Tune trial.

The checkpoint directory the loop hands over is only valid during the call; ``tune.report`` copies
it into the trial's storage before it returns, so the copy is what Tune restores a retried or
resumed trial from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ray import tune

from memseg.metrics.keys import STEP


def tune_metrics(step: int, metrics: Mapping[str, object]) -> dict[str, float | int]:
    """The numeric metrics of one evaluation, plus ``step`` (the ASHA time attribute).

    Non-finite values are kept: Tune and the searcher must see a NaN validation score as such.
    """
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value) if not isinstance(value, int) else value
    out[STEP] = int(step)
    return out


NODE_KEY = "ray_node_id"


class TuneReportCallback:
    """Reports validation metrics and the checkpoint directory to Tune at every evaluation.

    Args:
        extra: constant values added to every report (the trial's Ray node id, so the driver can
            tag where the trial ran).
    """

    def __init__(self, extra: Mapping[str, str | float] | None = None) -> None:
        self.extra = dict(extra or {})
        self.reports = 0

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        payload: dict[str, str | float] = {**tune_metrics(step, metrics), **self.extra}
        tune.report(payload, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        self.reports += 1
