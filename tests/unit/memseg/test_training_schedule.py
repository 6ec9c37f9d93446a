"""Warmup + cosine schedule, and the optimiser factory."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from memseg.config import OptimConfig
from memseg.training.schedule import create_optimizer, create_scheduler, lr_multiplier


def _lrs(cfg: OptimConfig, steps: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer([param], cfg)
    sched = create_scheduler(opt, cfg, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_is_linear_from_near_zero_then_cosine_to_the_floor() -> None:
    cfg = OptimConfig(lr=0.1, warmup_fraction=0.1, min_lr=0.01)
    lrs = _lrs(cfg, 100)
    # Warmup: 10 steps, (s + 1) / 10 * lr.
    assert lrs[:10] == pytest.approx([0.01 * (s + 1) for s in range(10)])
    assert lrs[0] == pytest.approx(0.01)  # not 0: the first step is not wasted
    # Peak right after the warmup, then strictly decreasing.
    assert lrs[10] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs[10:]))
    # Halfway through the cosine: floor + (peak - floor) / 2.
    assert lrs[55] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert min(lrs) >= 0.01 - 1e-12
    assert lr_multiplier(cfg, 100)(100) == pytest.approx(0.1)  # the floor, as a multiplier of lr
    assert lr_multiplier(cfg, 100)(10_000) == pytest.approx(0.1)  # never below it


def test_no_warmup_is_a_single_cosine_as_in_the_authors_code() -> None:
    cfg = OptimConfig(lr=0.04, warmup_fraction=0.0, min_lr=0.0)
    lrs = _lrs(cfg, 50)
    assert lrs[0] == pytest.approx(0.04)
    assert lrs[25] == pytest.approx(0.02)
    assert lrs[-1] == pytest.approx(0.04 * 0.5 * (1 + math.cos(math.pi * 49 / 50)))


def test_scheduler_state_round_trips() -> None:
    cfg = OptimConfig(lr=0.1, warmup_fraction=0.2, min_lr=0.001)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer([param], cfg)
    sched = create_scheduler(opt, cfg, 40)
    for _ in range(13):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = create_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched2 = create_scheduler(opt2, cfg, 40)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 13
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_optimizer_choice_follows_the_config() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = create_optimizer(params, OptimConfig(optimizer="sgd", lr=0.04, momentum=0.9, weight_decay=3e-5))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 3e-5
    adamw = create_optimizer(params, OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=5e-4))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["lr"] == 3e-3
