"""The seam between the training loop and whoever watches it (console, Ray Tune, MLflow).

memseg knows nothing of Ray or MLflow: ``sweeps`` implements :class:`TrainingCallback` with
``ray.tune.report``; ``pipelines`` adds MLflow on the driver side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class TrainingCallback(Protocol):
    """Called by :func:`memseg.training.fit` after every validation.

    Args:
        step: optimisation steps done so far.
        metrics: ``val_*`` metrics (names from :mod:`memseg.metrics.keys`), ``train_loss``, ``lr``,
            ``best_<selection metric>`` and ``step``.
        checkpoint_dir: a directory holding everything needed to resume (``model.pt``,
            ``train_state.pt``), the best-on-validation model so far (``best_model.pt``) and the
            validation heat-map overlays of this evaluation (``heatmaps/*.png``). It is only valid
            during the call: copy or persist it before returning.
    """

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None: ...
