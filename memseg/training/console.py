"""Console feedback for a training run: a tqdm progress bar over steps and one line per evaluation."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from memseg.metrics import keys

# The figures worth a glance, in this order; the rest stays in metrics.json / the callbacks.
_SHOWN = (
    keys.TRAIN_LOSS,
    "lr",
    keys.VAL_IMAGE_AUROC,
    keys.VAL_PIXEL_AUROC,
    keys.VAL_PIXEL_AUPRO,
)


def format_metrics(step: int, metrics: Mapping[str, float]) -> str:
    """One line: ``step 300 | train_loss 0.0412 | lr 2.1e-02 | val_image_auroc 0.981 | ... | best ...``."""
    parts = [f"step {step}"]
    for name in (*_SHOWN, *sorted(k for k in metrics if k.startswith("best_"))):
        if name not in metrics:
            continue
        value = float(metrics[name])
        if math.isnan(value):
            continue
        parts.append(f"{name} {value:.2e}" if name == "lr" else f"{name} {value:.4f}")
    return " | ".join(parts)


class TrainProgress:
    """A progress bar over optimisation steps showing the running loss and learning rate.

    Args:
        total: steps of the run.
        initial: steps already done (resume).
        enabled: False makes every method a no-op (``fit(progress=False)``, sweeps).
    """

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = (
            tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
            if enabled
            else None
        )

    def update_to(self, step: int, loss: float, lr: float) -> None:
        """Move the bar to ``step`` and show the mean loss of the last log interval."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def write_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Print an evaluation's line above the bar (only when the bar is shown)."""
        if self._bar is not None:
            self._bar.write(format_metrics(step, metrics), file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ConsoleCallback:
    """A :class:`~memseg.training.callbacks.TrainingCallback` that prints one line per evaluation.

    For runs without the progress bar (which already prints these lines), e.g. in logs of batch jobs.
    """

    def __init__(self, stream: object = None) -> None:
        self.stream = stream

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        tqdm.write(format_metrics(step, metrics), file=self.stream or sys.stdout)
