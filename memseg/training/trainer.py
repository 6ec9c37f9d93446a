"""The trainer: ``fit(cfg) -> FitResult`` trains one category and keeps the best-on-validation checkpoint.

:func:`fit` chains the steps of a run, each a method of :class:`Trainer` that can be read alone:

1. **build** (``Trainer(cfg)``): list the category's files and split ``train/good`` into memory /
   training / validation images (the memory images are held out of training, as in the authors'
   code), build the fixed validation set, the model and its memory bank, the loss, the optimiser
   (trainable parameters only: layer4 branch, MSFF, decoder) and the warmup + cosine schedule;
2. **resume** (:meth:`Trainer.resume`): weights, optimiser, scheduler, progress and RNG states from
   a checkpoint directory;
3. **train** (:meth:`Trainer.train`): :meth:`Trainer.step` on batches of normal + synthetic images
   until ``train.steps``; a loss log entry every ``train.log_interval`` steps; every
   ``train.eval_interval`` steps and at the end, :meth:`Trainer.evaluate` (validation, best so far)
   and :meth:`Trainer.checkpoint` (the checkpoint directory, written atomically), then each
   callback's ``on_eval``;
4. **test** (:meth:`Trainer.test`): the best-on-validation weights on the test split, once. Test
   metrics are reported next to the validation ones and never used for any choice;
5. **finish** (:meth:`Trainer.finish`): ``metrics.json`` and the :class:`FitResult`.

See docs/model.md, "Training recipe" and "Validation and selection".
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from memseg.config import MemSegConfig
from memseg.data.datasets import (
    EvalSet,
    build_validation_set,
    category_splits,
    create_train_loader,
    load_memory_images,
    load_test_set,
)
from memseg.data.mvtec import Sample
from memseg.errors import CheckpointError
from memseg.evaluation import evaluate_model
from memseg.loss import MemSegLoss
from memseg.metrics import keys
from memseg.model import MemSeg, create_model
from memseg.training import checkpoint as ckpt
from memseg.training.callbacks import StepHook, TrainBeginHook, TrainingCallback
from memseg.training.console import TrainProgress
from memseg.training.loop import (
    DivergenceWatch,
    LossSums,
    prepare_config,
    resolve_device,
    training_step,
)
from memseg.training.schedule import create_optimizer, create_scheduler
from memseg.training.seeding import rng_state, seed_everything, set_num_threads, set_rng_state
from memseg.visualize import panel

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
# Config fields that may differ between a run and its resumption without changing what is trained.
_RESUME_FREE_FIELDS = ("train.output_dir", "train.device", "data.num_workers", "data.root")


@dataclass
class FitResult:
    """What a training run produced.

    Attributes:
        best_step: step of the best-on-validation checkpoint.
        best_metrics: its validation metrics (``val_*``).
        test_metrics: ``test_*`` metrics of that checkpoint (empty when ``evaluate_test=False``).
        history: one dict per evaluation: ``step``, ``train_loss``, ``lr``, ``val_*`` and
            ``best_<selection metric>``.
        output_dir: ``train.output_dir``, absolute.
        best_checkpoint: the best model file (``model.pt`` layout).
        train_log: one dict per ``train.log_interval``: ``step``, ``loss`` (mean over the interval),
            the loss parts (``l1``, ``focal``) and ``lr``.
        config: the resolved configuration that was trained.
        wall_time_s: seconds spent in :func:`fit`.
    """

    best_step: int
    best_metrics: dict[str, float]
    test_metrics: dict[str, float]
    history: list[dict[str, float]]
    output_dir: Path
    best_checkpoint: Path
    train_log: list[dict[str, float]] = field(default_factory=list)
    config: MemSegConfig | None = None
    wall_time_s: float = 0.0

    @property
    def checkpoint_dir(self) -> Path:
        """The latest checkpoint directory (resumable)."""
        return self.output_dir / CHECKPOINTS_DIR / ckpt.LATEST_DIR

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / METRICS_FILE


@dataclass
class RunState:
    """Where a run stands; ``train_state.pt`` keeps it next to the optimiser, scheduler and RNG states."""

    step: int = 0
    best_value: float | None = None
    best_step: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    train_log: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_train_state(cls, state: Mapping[str, Any]) -> RunState:
        """Read back what :meth:`Trainer.train_state` saved."""
        return cls(
            step=int(state["step"]),
            best_value=state.get("best_value"),
            best_step=int(state.get("best_step", -1)),
            best_metrics=dict(state.get("best_metrics", {})),
            history=list(state.get("history", [])),
            train_log=list(state.get("train_log", [])),
        )

    def update_best(self, value: float, metrics: Mapping[str, float]) -> bool:
        """Make the current step the best when ``value`` beats the best so far; True when it did.

        A NaN value never beats a number, and anything beats no best or a NaN best.
        """
        best = self.best_value
        if best is not None and not math.isnan(best) and (math.isnan(value) or value <= best):
            return False
        self.best_value, self.best_step, self.best_metrics = value, self.step, dict(metrics)
        return True


@dataclass(frozen=True)
class Evaluation:
    """What one validation produced.

    Attributes:
        val_metrics: the ``val_*`` metrics (stored in ``model.pt``).
        metrics: the record appended to the history and handed to the callbacks (``val_*``,
            ``train_loss``, ``lr``, ``step``, ``best_<selection metric>``).
        maps: float32 ``(N, H, W)`` anomaly maps of the validation set (for the heat-map overlays).
        new_best: this evaluation became the best so far.
    """

    val_metrics: dict[str, float]
    metrics: dict[str, float]
    maps: np.ndarray
    new_best: bool


class Trainer:
    """One training run of one category, one step at a time (the module docstring gives the order).

    Building it does the **build** step; :func:`fit` calls the others.

    Args:
        cfg: the run's configuration, already through :func:`~memseg.training.loop.prepare_config`.
        callbacks: ``on_eval`` after every evaluation; ``on_train_begin``/``on_step`` on those that
            define them (:mod:`memseg.training.callbacks`).
        progress: show a progress bar.
        load_backbone_weights: False when every weight will come from a checkpoint (resume), so
            the backbone weights are neither downloaded nor read.
    """

    def __init__(
        self,
        cfg: MemSegConfig,
        *,
        callbacks: Iterable[TrainingCallback] = (),
        progress: bool = True,
        load_backbone_weights: bool = True,
    ) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        self.output_dir = Path(cfg.train.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / CONFIG_FILE).write_text(cfg.to_yaml())
        self.checkpoint_dir = self.output_dir / CHECKPOINTS_DIR / ckpt.LATEST_DIR
        self.best_file = self.output_dir / ckpt.BEST_MODEL_FILE
        self.state = RunState()

        self.files, self.splits = category_splits(cfg)
        log.info(
            "%s: %d memory, %d training, %d validation, %d test images at %d px on %s",
            cfg.data.category, len(self.splits.memory), len(self.splits.train), len(self.splits.val),
            len(self.files.test), cfg.data.image_size, self.device,
        )
        self.val_set = build_validation_set(self.splits.val, cfg)

        seed_everything(cfg.train.seed)
        self.channels_last = self.device.type == "cuda" and cfg.train.channels_last
        self.model = build_model(
            cfg, self.splits.memory, self.device,
            channels_last=self.channels_last, load_backbone_weights=load_backbone_weights,
        )
        self.criterion = MemSegLoss(cfg.loss).to(self.device)
        self.optimizer = create_optimizer(self.model.trainable_parameters(), cfg.optim)
        self.scheduler = create_scheduler(self.optimizer, cfg.optim, cfg.train.steps)

        self._log_sums = LossSums(self.device)
        self._eval_sums = LossSums(self.device)
        self._divergence: DivergenceWatch | None = None

    @property
    def selection_metric(self) -> str:
        return self.cfg.eval.selection_metric

    # --- resume ------------------------------------------------------------------------------------

    def resume(self, source: Path) -> None:
        """Continue from a checkpoint directory (``model.pt`` + ``train_state.pt``).

        Restores the weights, optimiser, scheduler, step, best so far, history, loss log and RNG
        states, and makes the directory's best model this run's best model file.

        Raises:
            CheckpointError: the checkpoint is unreadable or was trained with another model, image
                size or category.
        """
        model_file = source / ckpt.MODEL_FILE
        payload = ckpt.load_model_file(model_file)
        check_resume_config(self.cfg, payload, model_file)
        self.model.load_state_dict(payload["state_dict"])
        state = ckpt.load_train_state(source / ckpt.TRAIN_STATE_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = RunState.from_train_state(state)
        if "rng" in state:
            set_rng_state(state["rng"])
        source_best = source / ckpt.BEST_MODEL_FILE
        if source_best.is_file() and source_best.resolve() != self.best_file.resolve():
            ckpt.link_or_copy(source_best, self.best_file.with_suffix(".tmp"))
            os.replace(self.best_file.with_suffix(".tmp"), self.best_file)
        log.info(
            "resumed from %s at step %d (best %s=%s at step %d)",
            source, self.state.step, self.selection_metric, self.state.best_value, self.state.best_step,
        )

    # --- train -------------------------------------------------------------------------------------

    def train(self, *, eval_at_start: bool = False) -> None:
        """Run the steps left up to ``train.steps``, logging, validating and checkpointing on the way.

        Args:
            eval_at_start: also evaluate (and checkpoint) before the first step of a fresh run.
        """
        for callback in self.callbacks:
            if isinstance(callback, TrainBeginHook):
                callback.on_train_begin(self.state.step)
        bar = TrainProgress(self.cfg.train.steps, initial=self.state.step, enabled=self.progress)
        try:
            if eval_at_start and self.state.step == 0:
                self._evaluate_and_report(bar)
            if self.state.step < self.cfg.train.steps:
                self._train_steps(bar)
        finally:
            bar.close()
        if self.state.best_step < 0:
            # Resumed from a finished run: nothing was trained or evaluated in this call.
            log.info("nothing to train: the checkpoint is already at step %d", self.state.step)

    def _train_steps(self, bar: TrainProgress) -> None:
        train = self.cfg.train
        step_hooks = [callback for callback in self.callbacks if isinstance(callback, StepHook)]
        loader = create_train_loader(
            self.splits.train, self.cfg, start_step=self.state.step, pin_memory=self.device.type == "cuda"
        )
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader)
        self.model.train()
        try:
            while self.state.step < train.steps:
                for hook in step_hooks:
                    hook.on_step(self.state.step)
                images, masks = next(batches)
                self.step(images, masks)
                step = self.state.step
                if step % train.log_interval == 0 or step == train.steps:
                    bar.update_to(step, *self._log_losses())
                if step % train.eval_interval == 0 or step == train.steps:
                    self._evaluate_and_report(bar)
        finally:
            # Stop the DataLoader workers now, not when the garbage collector (or an exception's
            # traceback) lets go of the endless iterator.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        """One optimisation step on a batch; its loss goes into the device-side sums (no host sync)."""
        total, parts = training_step(
            self.model, self.criterion, self.optimizer, self.scheduler, images, masks, self.device,
            amp=self.cfg.train.amp, channels_last=self.channels_last,
        )
        self.state.step += 1
        if self._divergence is None:
            self._divergence = DivergenceWatch(sorted(parts), self.device)
        self._divergence.update(self.state.step, total, parts)
        detached = total.detach().float()
        self._log_sums.add(detached, parts)
        self._eval_sums.add(detached)

    def _log_losses(self) -> tuple[float, float]:
        """Append the mean loss and parts since the last entry to the loss log; (loss, lr) for the bar."""
        self._check_divergence()
        loss, parts = self._log_sums.read_means()
        lr = self._lr()
        self.state.train_log.append({keys.STEP: float(self.state.step), "loss": loss, "lr": lr, **parts})
        return loss, lr

    def _check_divergence(self) -> None:
        if self._divergence is not None:
            self._divergence.check()

    def _lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    # --- evaluate and checkpoint -------------------------------------------------------------------

    def evaluate(self) -> Evaluation:
        """Validate the current weights, update the best so far and append the evaluation to the history.

        Raises:
            TrainingDivergedError: a loss since the last check was not finite.
        """
        self._check_divergence()
        val_metrics, maps = evaluate_set(
            self.model, self.val_set, self.cfg, self.device, keys.VAL_PREFIX, per_type=False
        )
        sel = self.selection_metric
        new_best = self.state.update_best(val_metrics.get(sel, math.nan), val_metrics)
        best = self.state.best_value
        metrics = {
            **val_metrics,
            keys.TRAIN_LOSS: self._eval_sums.read_mean_total(),
            "lr": self._lr(),
            keys.STEP: float(self.state.step),
            f"best_{sel}": float(best) if best is not None else math.nan,
        }
        self.state.history.append(metrics)
        return Evaluation(val_metrics=val_metrics, metrics=metrics, maps=maps, new_best=new_best)

    def checkpoint(self, evaluation: Evaluation) -> None:
        """Write the checkpoint directory atomically (docs/architecture.md, "Checkpoint directory").

        ``model.pt`` holds the current weights, ``best_model.pt`` the best so far (the run's best
        model file is replaced first when this evaluation is the new best), ``train_state.pt`` what
        :meth:`resume` needs, ``heatmaps/`` validation overlays of this evaluation.
        """

        def fill(tmp: Path) -> None:
            ckpt.save_model(tmp / ckpt.MODEL_FILE, self.model, self.cfg, self.state.step, evaluation.val_metrics)
            if evaluation.new_best or not self.best_file.is_file():
                staging = self.best_file.with_suffix(".tmp")
                staging.unlink(missing_ok=True)
                ckpt.link_or_copy(tmp / ckpt.MODEL_FILE, staging)
                os.replace(staging, self.best_file)
            ckpt.link_or_copy(self.best_file, tmp / ckpt.BEST_MODEL_FILE)
            ckpt.save_train_state(tmp / ckpt.TRAIN_STATE_FILE, self.train_state())
            heatmaps = tmp / ckpt.HEATMAP_DIR
            heatmaps.mkdir()
            for name, image in validation_panels(self.val_set, evaluation.maps, self.cfg.eval.heatmap_samples):
                cv2.imwrite(str(heatmaps / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

        ckpt.write_checkpoint_dir(self.checkpoint_dir, fill)

    def train_state(self) -> dict[str, Any]:
        """The ``train_state.pt`` payload: the run state, optimiser, scheduler and RNG states."""
        state = self.state
        return {
            "step": state.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_value": state.best_value,
            "best_step": state.best_step,
            "best_metrics": state.best_metrics,
            "selection_metric": self.selection_metric,
            "history": state.history,
            "train_log": state.train_log,
            "rng": rng_state(),
        }

    def _evaluate_and_report(self, bar: TrainProgress) -> None:
        evaluation = self.evaluate()
        self.checkpoint(evaluation)
        step = self.state.step
        bar.write_metrics(step, evaluation.metrics)
        for callback in self.callbacks:
            callback.on_eval(step, dict(evaluation.metrics), self.checkpoint_dir)

    # --- test and finish ---------------------------------------------------------------------------

    def test(self) -> dict[str, float]:
        """``test_*`` metrics (overall and per defect type) of the best-on-validation weights.

        Loads those weights into the model. Empty when the category has no test images.
        """
        if not self.files.test:
            return {}
        payload = ckpt.load_model_file(self.best_file)
        self.model.load_state_dict(payload["state_dict"])
        test_set = load_test_set(self.files.test, self.cfg.data.image_size)
        metrics, _ = evaluate_set(self.model, test_set, self.cfg, self.device, keys.TEST_PREFIX, per_type=True)
        return metrics

    def finish(self, test_metrics: dict[str, float], wall_time_s: float) -> FitResult:
        """Write ``metrics.json`` (the best validation figures beside the test ones) and return the result."""
        state = self.state
        summary = {
            "category": self.cfg.data.category,
            "steps": state.step,
            "best_step": state.best_step,
            "selection_metric": self.selection_metric,
            **state.best_metrics,
            **test_metrics,
            "wall_time_s": wall_time_s,
        }
        (self.output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return FitResult(
            best_step=state.best_step,
            best_metrics=state.best_metrics,
            test_metrics=test_metrics,
            history=state.history,
            output_dir=self.output_dir,
            best_checkpoint=self.best_file,
            train_log=state.train_log,
            config=self.cfg,
            wall_time_s=wall_time_s,
        )


def fit(
    cfg: MemSegConfig,
    *,
    callbacks: Iterable[TrainingCallback] = (),
    resume_from: str | Path | None = None,
    progress: bool = True,
    evaluate_test: bool = True,
    eval_at_start: bool = False,
    num_threads: int | None = None,
) -> FitResult:
    """Train MemSeg on one category and keep the best-on-validation checkpoint.

    Args:
        cfg: the run's configuration (category defaults are filled in here).
        callbacks: objects with ``on_eval(step, metrics, checkpoint_dir)``, called after every
            evaluation, and optionally ``on_train_begin(start_step)`` and ``on_step(step)``
            (see :mod:`memseg.training.callbacks`). An exception from a hook stops the run.
        resume_from: a checkpoint directory (``model.pt`` + ``train_state.pt``) to continue from:
            model, optimizer, scheduler, step, best-so-far, history and RNG states are restored.
        progress: show a progress bar.
        evaluate_test: evaluate the best checkpoint on the test split at the end.
        eval_at_start: also evaluate before the first step (step 0), like any other evaluation
            (it may become the best checkpoint); the learning test compares it with the trained model.
        num_threads: torch intra-op threads; ``None`` = ``$MEMSEG_NUM_THREADS`` or torch's default.

    Returns:
        :class:`FitResult`; ``output_dir/metrics.json`` holds the same figures.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite (the message names the step and the
            loss parts).
        DatasetLayoutError, ConfigError, CheckpointError: bad data, config or checkpoint.
    """
    started = time.perf_counter()
    set_num_threads(num_threads)
    cfg = prepare_config(cfg)
    source = ckpt.check_checkpoint_dir(resume_from) if resume_from is not None else None
    trainer = Trainer(cfg, callbacks=callbacks, progress=progress, load_backbone_weights=source is None)
    if source is not None:
        trainer.resume(source)
    trainer.train(eval_at_start=eval_at_start)
    test_metrics = trainer.test() if evaluate_test else {}
    return trainer.finish(test_metrics, time.perf_counter() - started)


def build_model(
    cfg: MemSegConfig,
    memory: Sequence[Sample],
    device: torch.device,
    *,
    channels_last: bool,
    load_backbone_weights: bool = True,
) -> MemSeg:
    """The network on ``device`` with its memory bank built from the memory images."""
    model = create_model(cfg, load_backbone_weights=load_backbone_weights).to(device)
    with torch.no_grad():
        model.build_memory(load_memory_images(memory, cfg.data.image_size).to(device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_resume_config(cfg: MemSegConfig, payload: Mapping[str, Any], path: Path) -> None:
    """Refuse a checkpoint trained with another model, image size or category; warn on other changes.

    Raises:
        CheckpointError: naming the file and the fields that differ.
    """
    now, then = cfg.flatten(), ckpt.config_from_payload(payload, path).flatten()
    differ = sorted(k for k in now if now[k] != then.get(k) and k not in _RESUME_FREE_FIELDS)
    model_keys = [k for k in differ if k.startswith(("model.", "data.image_size", "data.category"))]
    if model_keys:
        msg = f"{path}: cannot resume: the checkpoint was trained with different {', '.join(model_keys)}"
        raise CheckpointError(msg)
    if differ:
        log.warning("resuming from %s with a config that differs in %s", path, ", ".join(differ))


def evaluate_set(
    model: MemSeg, data: EvalSet, cfg: MemSegConfig, device: torch.device, prefix: str, *, per_type: bool
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics (keys prefixed ``val_``/``test_``) and anomaly maps of ``model`` on ``data``, in eval mode.

    Always float32, whatever ``train.amp`` and any autocast around the call: checkpoints are chosen
    on the maps that ``memseg evaluate`` and ``memseg predict`` compute for them.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            metrics, maps = evaluate_model(
                model, data.images, data.masks, data.labels, data.defect_types if per_type else None,
                cfg.eval, device,
            )
    finally:
        model.train(was_training)
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}, np.asarray(maps)


def validation_panels(val: EvalSet, maps: np.ndarray, n: int) -> list[tuple[str, np.ndarray]]:
    """``n`` validation overlays, evenly spread over the set (the same indices at every evaluation)."""
    if n <= 0 or len(val) == 0:
        return []
    indices = np.unique(np.linspace(0, len(val) - 1, num=min(n, len(val))).round().astype(int))
    out = []
    for i in indices:
        image = (val.images[i].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        out.append((f"val_{i:03d}_{val.defect_types[i]}.png", panel(image, val.masks[i], np.asarray(maps[i]))))
    return out
