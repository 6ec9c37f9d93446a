"""Training: the trainer (:func:`fit`), checkpoints, schedule, seeding and the callback seam."""

from memseg.training.callbacks import Callback, TrainingCallback
from memseg.training.loop import FitResult, fit, resolve_device

__all__ = ["Callback", "FitResult", "TrainingCallback", "fit", "resolve_device"]
