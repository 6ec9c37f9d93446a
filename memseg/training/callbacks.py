"""The seam between the training loop and whoever watches it (console, Ray Tune, MLflow, tests).

memseg knows nothing of Ray or MLflow: ``sweeps`` implements :class:`TrainingCallback` with
``ray.tune.report``; ``pipelines`` adds MLflow on the driver side.

A callback has up to three hooks, called in this order by :func:`memseg.training.fit`:

- ``on_train_begin(start_step)``: once, before the first training step;
- ``on_step(step)``: at the start of every training step;
- ``on_eval(step, metrics, checkpoint_dir)``: after every validation (the one required hook).

The first two are optional: the trainer calls them on the callbacks that define them, so a
callback written with ``on_eval`` alone keeps working. :class:`Callback` gives all three as no-ops
for a subclass to override.
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


@runtime_checkable
class TrainBeginHook(Protocol):
    """A callback that wants to know where training starts."""

    def on_train_begin(self, start_step: int) -> None:
        """Called once before the first training step.

        Args:
            start_step: steps already done: 0 for a fresh run, the checkpoint's step when resumed.
        """


@runtime_checkable
class StepHook(Protocol):
    """A callback called at every training step (it may raise to stop the run, as fault injection does)."""

    def on_step(self, step: int) -> None:
        """Called at the start of every training step, before its batch is drawn.

        Args:
            step: steps done so far (0 at the first step of a fresh run, ``start_step`` after a
                resume), so the step about to run is ``step + 1``.
        """


class Callback:
    """A training callback whose three hooks do nothing: subclass it and override what you need."""

    def on_train_begin(self, start_step: int) -> None:
        """See :meth:`TrainBeginHook.on_train_begin`."""

    def on_step(self, step: int) -> None:
        """See :meth:`StepHook.on_step`."""

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        """See :class:`TrainingCallback`."""
