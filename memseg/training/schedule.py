"""Learning-rate schedule: linear warmup, then cosine decay to a floor (docs/model.md, "Training recipe").

The authors' code uses ``CosineAnnealingWarmRestarts(T_0=epochs)`` with one "epoch" per optimiser
step, i.e. a single cosine over the whole run and no warmup (``optim.warmup_fraction=0``, the
default). A public reimplementation warms up linearly over 10 % of the steps; both are reachable from
:class:`memseg.config.OptimConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from memseg.config import OptimConfig


class WarmupCosine:
    """The LR multiplier at a step (a picklable callable, so ``LambdaLR.state_dict`` keeps it).

    Args:
        total_steps: optimisation steps of the run (the cosine ends at ``total_steps``).
        warmup_steps: linear warmup from ``1 / warmup_steps`` to 1 over this many steps.
        floor: the multiplier the cosine decays to (``min_lr / lr``).
    """

    def __init__(self, total_steps: int, warmup_steps: int, floor: float) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            # (step + 1) so that the very first step does not run at lr = 0 (a wasted step).
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(cfg: OptimConfig, total_steps: int) -> WarmupCosine:
    """The multiplier function for a config: ``warmup_fraction * total_steps`` warmup steps."""
    warmup = round(cfg.warmup_fraction * total_steps)
    floor = min(1.0, cfg.min_lr / cfg.lr)
    return WarmupCosine(total_steps, warmup, floor)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """A per-step ``LambdaLR``: call ``scheduler.step()`` once after every optimiser step.

    The learning rate used at step ``s`` (0-based) is ``cfg.lr * lr_multiplier(cfg, total)(s)``.
    """
    return LambdaLR(optimizer, lr_lambda=lr_multiplier(cfg, total_steps))


def create_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the authors') or AdamW (a public reimplementation's), over the given parameters only."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
