"""Training: the loop (:func:`fit`), checkpoints, schedule, seeding and the callback seam."""

from memseg.training.callbacks import TrainingCallback
from memseg.training.loop import FitResult, fit

__all__ = ["FitResult", "TrainingCallback", "fit"]
