"""Training: the trainer (:func:`fit`), checkpoints, schedule, seeding and the callback seam."""

from memseg.training.callbacks import Callback, TrainingCallback
from memseg.training.loop import resolve_device
from memseg.training.trainer import FitResult, Trainer, fit

__all__ = ["Callback", "FitResult", "Trainer", "TrainingCallback", "fit", "resolve_device"]
