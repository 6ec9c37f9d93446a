"""The pieces of the training loop: config preparation, device choice, one optimisation step, and the
device-side bookkeeping around it. :mod:`memseg.training.trainer` puts them together into a run.

Mixed precision: on CUDA the forward pass runs under bfloat16 autocast, not float16. The spatial
attention is an unnormalised product of three channel means of ``diff_scale * |difference|`` (see
docs/model.md, "Spatial attention"), which easily exceeds float16's 65504 and would turn into inf;
bfloat16 has float32's range. The loss is computed in float32, and no GradScaler is needed with
bfloat16. Validation and test evaluations run in float32 whatever ``train.amp`` says
(:func:`memseg.training.trainer.evaluate_set`).

The step loop does not synchronise with the device except every ``train.log_interval`` steps (loss
logging and the NaN check) and at evaluations: the loss sums (:class:`LossSums`) and the first
non-finite step (:class:`DivergenceWatch`) are kept on the device in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LRScheduler

from memseg.config import MemSegConfig, resolve_for_category
from memseg.errors import ConfigError, TrainingDivergedError
from memseg.synthesis import check_texture_source


def prepare_config(cfg: MemSegConfig) -> MemSegConfig:
    """Category defaults filled in, ``data.root``/``data.dtd_root``/``train.output_dir`` absolute, and
    the texture source checked.

    Absolute paths matter because Ray Tune runs each trial in its own working directory.

    Raises:
        ConfigError: ``data.texture_source=dtd`` without DTD images under ``data.dtd_root``
            (:func:`~memseg.synthesis.check_texture_source`), before any training work.
    """
    cfg = resolve_for_category(cfg)
    changes: dict[str, str] = {
        "data.root": str(Path(cfg.data.root).expanduser().resolve()),
        "train.output_dir": str(Path(cfg.train.output_dir).expanduser().resolve()),
    }
    if cfg.data.dtd_root:
        changes["data.dtd_root"] = str(Path(cfg.data.dtd_root).expanduser().resolve())
    cfg = cfg.with_overrides(changes)
    check_texture_source(cfg.data)
    return cfg


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = f"train.device={name!r}: CUDA is not available on this machine"
        raise ConfigError(msg)
    return device


def autocast_for(device: torch.device, enabled: bool) -> AbstractContextManager[object]:
    """bfloat16 autocast of a training step on CUDA when ``train.amp`` (see the module docstring), else nothing."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def training_step(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
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


class LossSums:
    """Sums of the loss (and optionally its parts) over the steps since the last read, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros((), device=self.device)
        self.parts: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, total: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> None:
        """Add one step's detached float loss (and its parts, when this sum keeps them)."""
        self.total += total
        for name, value in (parts or {}).items():
            self.parts[name] = self.parts.get(name, torch.zeros((), device=self.device)) + value.detach().float()
        self.steps += 1

    def read_means(self) -> tuple[float, dict[str, float]]:
        """The mean loss and mean parts since the last read (one host sync), then start again."""
        names = sorted(self.parts)
        values = torch.stack([self.total, *(self.parts[n] for n in names)]).div(self.steps).tolist()
        self.reset()
        return values[0], dict(zip(names, values[1:], strict=True))

    def read_mean_total(self) -> float:
        """The mean loss since the last read (NaN when no step was added), then start again."""
        mean = float(self.total.item()) / self.steps if self.steps else math.nan
        self.reset()
        return mean


class DivergenceWatch:
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
