"""The training loop: ``fit(cfg) -> FitResult`` (spec section 3; docs/architecture.md "Validation").

One run trains one category:

1. resolve the category defaults, make paths absolute, list the files and split ``train/good`` into
   memory / training / validation images (the memory images are held out of training, the authors'
   choice);
2. build the model and its memory bank from the memory images;
3. optimise the trainable parameters only (layer4 branch, MSFF, decoder) with SGD or AdamW and a
   per-step warmup + cosine schedule, on batches of normal + synthetic images;
4. every ``train.eval_interval`` steps and at the end: validate on the fixed validation set, keep
   the best checkpoint on ``eval.selection_metric``, write the checkpoint directory atomically and
   call each callback's ``on_eval``;
5. at the end, evaluate the best-on-validation weights on the test split once. Test metrics are
   reported next to the validation ones and never used for any choice.

Mixed precision: on CUDA the forward pass runs under bfloat16 autocast, not float16. The spatial
attention is an unnormalised product of three channel means of ``diff_scale * |difference|``
(spec 1.4), which easily exceeds float16's 65504 and would turn into inf; bfloat16 has float32's
range. The loss is computed in float32, and no GradScaler is needed with bfloat16.

The step loop does not synchronise with the device except every ``train.log_interval`` steps (loss
logging and the NaN check) and at evaluations: the loss and the first non-finite step are kept on
the device in between.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from memseg.config import MemSegConfig, resolve_for_category
from memseg.data.datasets import (
    EvalSet,
    build_validation_set,
    category_splits,
    create_train_loader,
    load_memory_images,
    load_test_set,
)
from memseg.errors import CheckpointError, TrainingDivergedError
from memseg.metrics import keys
from memseg.training import checkpoint as ckpt
from memseg.training.callbacks import StepHook, TrainBeginHook, TrainingCallback
from memseg.training.console import TrainProgress
from memseg.training.schedule import create_optimizer, create_scheduler
from memseg.training.seeding import rng_state, seed_everything, set_num_threads, set_rng_state

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


def prepare_config(cfg: MemSegConfig) -> MemSegConfig:
    """Category defaults filled in, ``data.root``/``data.dtd_root``/``train.output_dir`` absolute.

    Absolute paths matter because Ray Tune runs each trial in its own working directory.
    """
    cfg = resolve_for_category(cfg)
    changes: dict[str, Any] = {
        "data.root": str(Path(cfg.data.root).expanduser().resolve()),
        "train.output_dir": str(Path(cfg.train.output_dir).expanduser().resolve()),
    }
    if cfg.data.dtd_root:
        changes["data.dtd_root"] = str(Path(cfg.data.dtd_root).expanduser().resolve())
    return cfg.with_overrides(changes)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from memseg.errors import ConfigError

        msg = f"train.device={name!r}: CUDA is not available on this machine"
        raise ConfigError(msg)
    return device


def autocast_for(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on CUDA when ``train.amp`` (see the module docstring), else nothing."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def training_step(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    images: torch.Tensor,
    masks: torch.Tensor,
    device: torch.device,
    *,
    amp: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step (no host-device sync); ``memseg bench`` times this same function.

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1] (host or device).
        masks: ``(B, H, W)`` in {0, 1}.

    Returns:
        The total loss and its parts, still on the device.
    """
    images = images.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, amp):
        logits = model(images)
    total, parts = criterion(logits.float(), masks)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    scheduler.step()
    return total, parts


class _Divergence:
    """Device-side record of the first step whose loss was not finite (no host sync per step)."""

    def __init__(self, part_names: Sequence[str], device: torch.device) -> None:
        self.part_names = list(part_names)
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.values = torch.zeros(1 + len(self.part_names), device=device)

    def update(self, step: int, total: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        values = torch.stack([total.detach().float(), *(parts[k].detach().float() for k in self.part_names)])
        first = (~torch.isfinite(values[0])) & (self.step < 0)
        self.step = torch.where(first, torch.full_like(self.step, step), self.step)
        self.values = torch.where(first, values, self.values)

    def check(self) -> None:
        """Raise :class:`TrainingDivergedError` if a non-finite loss was seen (one host sync)."""
        bad_step = int(self.step.item())
        if bad_step < 0:
            return
        values = self.values.tolist()
        parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.part_names, values[1:], strict=True))
        msg = (
            f"training diverged: the loss became {values[0]} at step {bad_step} ({parts}). "
            "Lower optim.lr, or check model.diff_scale/model.feature_scale (the spatial attention is "
            "unnormalised) and the data."
        )
        raise TrainingDivergedError(msg)


def _check_resume_config(cfg: MemSegConfig, stored: dict[str, Any], path: Path) -> None:
    stored_cfg = ckpt.config_from_payload({"config": stored}, path)
    now, then = cfg.flatten(), stored_cfg.flatten()
    differ = sorted(k for k in now if now[k] != then.get(k) and k not in _RESUME_FREE_FIELDS)
    model_keys = [k for k in differ if k.startswith(("model.", "data.image_size", "data.category"))]
    if model_keys:
        msg = f"{path}: cannot resume: the checkpoint was trained with different {', '.join(model_keys)}"
        raise CheckpointError(msg)
    if differ:
        log.warning("resuming from %s with a config that differs in %s", path, ", ".join(differ))


def _is_better(value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return True
    return not math.isnan(value) and value > best


def _panels(val: EvalSet, maps: np.ndarray, n: int) -> list[tuple[str, np.ndarray]]:
    """``n`` validation overlays, evenly spread over the set (the same indices at every evaluation)."""
    if n <= 0 or len(val) == 0:
        return []
    from memseg.visualize import panel

    indices = np.unique(np.linspace(0, len(val) - 1, num=min(n, len(val))).round().astype(int))
    out = []
    for i in indices:
        image = (val.images[i].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        out.append((f"val_{i:03d}_{val.defect_types[i]}.png", panel(image, val.masks[i], np.asarray(maps[i]))))
    return out


def _evaluate(
    model: nn.Module, data: EvalSet, cfg: MemSegConfig, device: torch.device, prefix: str, *, per_type: bool
) -> tuple[dict[str, float], np.ndarray]:
    from memseg.evaluation import evaluate_model

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_for(device, cfg.train.amp):
            metrics, maps = evaluate_model(
                model, data.images, data.masks, data.labels, data.defect_types if per_type else None,
                cfg.eval, device,
            )
    finally:
        model.train(was_training)
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}, np.asarray(maps)


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
            evaluation (see :class:`memseg.training.callbacks.TrainingCallback`).
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
    callbacks = list(callbacks)
    source = ckpt.check_checkpoint_dir(resume_from) if resume_from is not None else None
    device = resolve_device(cfg.train.device)
    output_dir = Path(cfg.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CONFIG_FILE).write_text(cfg.to_yaml())
    checkpoint_dir = output_dir / CHECKPOINTS_DIR / ckpt.LATEST_DIR
    best_file = output_dir / ckpt.BEST_MODEL_FILE
    sel = cfg.eval.selection_metric
    best_key = f"best_{sel}"

    from memseg.loss import MemSegLoss
    from memseg.model import create_model

    # --- data ------------------------------------------------------------------------------------
    files, splits = category_splits(cfg)
    log.info(
        "%s: %d memory, %d training, %d validation, %d test images at %d px on %s",
        cfg.data.category, len(splits.memory), len(splits.train), len(splits.val), len(files.test),
        cfg.data.image_size, device,
    )
    val_set = build_validation_set(splits.val, cfg)

    # --- model, memory, optimiser ------------------------------------------------------------------
    seed_everything(cfg.train.seed)
    # A resumed run gets every weight (backbone and memory included) from its checkpoint: no need
    # to download or read the backbone weights again.
    model = create_model(cfg, load_backbone_weights=source is None).to(device)
    with torch.no_grad():
        model.build_memory(load_memory_images(splits.memory, cfg.data.image_size).to(device))
    channels_last = device.type == "cuda" and cfg.train.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = MemSegLoss(cfg.loss).to(device)
    optimizer = create_optimizer(model.trainable_parameters(), cfg.optim)
    scheduler = create_scheduler(optimizer, cfg.optim, cfg.train.steps)

    step = 0
    best_value: float | None = None
    best_step = -1
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    train_log: list[dict[str, float]] = []
    if source is not None:
        payload = ckpt.load_model_file(source / ckpt.MODEL_FILE)
        _check_resume_config(cfg, payload["config"], source / ckpt.MODEL_FILE)
        model.load_state_dict(payload["state_dict"])
        state = ckpt.load_train_state(source / ckpt.TRAIN_STATE_FILE)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        best_value = state.get("best_value")
        best_step = int(state.get("best_step", -1))
        best_metrics = dict(state.get("best_metrics", {}))
        history = list(state.get("history", []))
        train_log = list(state.get("train_log", []))
        if "rng" in state:
            set_rng_state(state["rng"])
        source_best = source / ckpt.BEST_MODEL_FILE
        if source_best.is_file() and source_best.resolve() != best_file.resolve():
            ckpt.link_or_copy(source_best, best_file.with_suffix(".tmp"))
            os.replace(best_file.with_suffix(".tmp"), best_file)
        log.info("resumed from %s at step %d (best %s=%s at step %d)", source, step, sel, best_value, best_step)

    loss_sum = torch.zeros((), device=device)
    eval_loss_sum = torch.zeros((), device=device)
    parts_sum: dict[str, torch.Tensor] = {}
    divergence: _Divergence | None = None
    steps_in_log = 0
    steps_in_eval = 0

    def evaluate_and_checkpoint() -> None:
        nonlocal best_value, best_step, best_metrics, eval_loss_sum, steps_in_eval
        if divergence is not None:
            divergence.check()
        val_metrics, maps = _evaluate(model, val_set, cfg, device, keys.VAL_PREFIX, per_type=False)
        value = val_metrics.get(sel, float("nan"))
        new_best = _is_better(value, best_value)
        if new_best:
            best_value, best_step, best_metrics = value, step, dict(val_metrics)
        train_loss = float(eval_loss_sum.item()) / steps_in_eval if steps_in_eval else float("nan")
        eval_loss_sum = torch.zeros((), device=device)
        steps_in_eval = 0
        metrics = {
            **val_metrics,
            keys.TRAIN_LOSS: train_loss,
            "lr": float(scheduler.get_last_lr()[0]),
            keys.STEP: float(step),
            best_key: float(best_value) if best_value is not None else float("nan"),
        }
        history.append(metrics)

        def fill(tmp: Path) -> None:
            ckpt.save_model(tmp / ckpt.MODEL_FILE, model, cfg, step, val_metrics)
            if new_best or not best_file.is_file():
                staging = best_file.with_suffix(".tmp")
                staging.unlink(missing_ok=True)
                ckpt.link_or_copy(tmp / ckpt.MODEL_FILE, staging)
                os.replace(staging, best_file)
            ckpt.link_or_copy(best_file, tmp / ckpt.BEST_MODEL_FILE)
            ckpt.save_train_state(
                tmp / ckpt.TRAIN_STATE_FILE,
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_value": best_value,
                    "best_step": best_step,
                    "best_metrics": best_metrics,
                    "selection_metric": sel,
                    "history": history,
                    "train_log": train_log,
                    "rng": rng_state(),
                },
            )
            heatmaps = tmp / ckpt.HEATMAP_DIR
            heatmaps.mkdir()
            for name, image in _panels(val_set, maps, cfg.eval.heatmap_samples):
                cv2.imwrite(str(heatmaps / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

        ckpt.write_checkpoint_dir(checkpoint_dir, fill)
        bar.write_metrics(step, metrics)
        for callback in callbacks:
            callback.on_eval(step, dict(metrics), checkpoint_dir)

    step_hooks = [cb for cb in callbacks if isinstance(cb, StepHook)]
    for callback in callbacks:
        if isinstance(callback, TrainBeginHook):
            callback.on_train_begin(step)
    bar = TrainProgress(cfg.train.steps, initial=step, enabled=progress)
    loader_iter = None
    try:
        if eval_at_start and step == 0:
            evaluate_and_checkpoint()
        if step < cfg.train.steps:
            loader = create_train_loader(splits.train, cfg, start_step=step, pin_memory=device.type == "cuda")
            loader_iter = iter(loader)
        model.train()
        while step < cfg.train.steps:
            for hook in step_hooks:
                hook.on_step(step)
            images, masks = next(loader_iter)
            total, parts = training_step(
                model, criterion, optimizer, scheduler, images, masks, device,
                amp=cfg.train.amp, channels_last=channels_last,
            )
            step += 1
            steps_in_log += 1
            steps_in_eval += 1

            if divergence is None:
                divergence = _Divergence(sorted(parts), device)
            divergence.update(step, total, parts)
            detached = total.detach().float()
            loss_sum += detached
            eval_loss_sum += detached
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, torch.zeros((), device=device)) + value.detach().float()

            if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
                divergence.check()
                names = sorted(parts_sum)
                values = torch.stack([loss_sum, *(parts_sum[n] for n in names)]).div(steps_in_log).tolist()
                lr = float(scheduler.get_last_lr()[0])
                entry = {keys.STEP: float(step), "loss": values[0], "lr": lr}
                entry.update(dict(zip(names, values[1:], strict=True)))
                train_log.append(entry)
                bar.update_to(step, values[0], lr)
                loss_sum = torch.zeros((), device=device)
                parts_sum = {}
                steps_in_log = 0
            if step % cfg.train.eval_interval == 0 or step == cfg.train.steps:
                evaluate_and_checkpoint()
    finally:
        bar.close()
        # Stop the DataLoader workers now, not when the garbage collector (or an exception's
        # traceback) lets go of the endless iterator.
        shutdown = getattr(loader_iter, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        loader_iter = None

    if best_step < 0:
        # Resumed from a finished run: nothing was trained or evaluated in this call.
        log.info("nothing to train: the checkpoint is already at step %d", step)

    test_metrics: dict[str, float] = {}
    if evaluate_test and files.test:
        payload = ckpt.load_model_file(best_file)
        model.load_state_dict(payload["state_dict"])
        test_set = load_test_set(files.test, cfg.data.image_size)
        test_metrics, _ = _evaluate(model, test_set, cfg, device, keys.TEST_PREFIX, per_type=True)

    wall = time.perf_counter() - started
    summary = {
        "category": cfg.data.category,
        "steps": step,
        "best_step": best_step,
        "selection_metric": sel,
        **best_metrics,
        **test_metrics,
        "wall_time_s": wall,
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return FitResult(
        best_step=best_step,
        best_metrics=best_metrics,
        test_metrics=test_metrics,
        history=history,
        output_dir=output_dir,
        best_checkpoint=best_file,
        train_log=train_log,
        config=cfg,
        wall_time_s=wall,
    )
