"""L1 + focal loss against hand computations (docs/model.md, "Loss")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memseg.config import LossConfig, MemSegConfig, resolve_for_category
from memseg.loss import MemSegLoss
from memseg.model import create_model

# One 2x2 image. Anomaly probabilities p1 = softmax channel 1: 0.75, 0.5 / 0.25, 0.8.
ANOMALY_PROBS = [[0.75, 0.5], [0.25, 0.8]]
MASK = [[1.0, 0.0], [0.0, 1.0]]


def _logits() -> torch.Tensor:
    diff = torch.tensor([[math.log(p / (1 - p)) for p in row] for row in ANOMALY_PROBS])
    return torch.stack([torch.zeros(2, 2), diff])[None]  # (1, 2, 2, 2)


def _mask() -> torch.Tensor:
    return torch.tensor(MASK)[None]


def _loss(**kwargs: float) -> MemSegLoss:
    return MemSegLoss(LossConfig(**kwargs))


def test_l1_is_mean_absolute_error_of_the_anomaly_probability() -> None:
    _, parts = _loss(label_smoothing=0.0)(_logits(), _mask())
    # |0.75-1| + |0.5-0| + |0.25-0| + |0.8-1| = 1.2, over 4 pixels.
    assert parts["l1"].item() == pytest.approx(0.3, abs=1e-6)


def test_focal_without_smoothing_matches_hand_computation() -> None:
    _, parts = _loss(label_smoothing=0.0, focal_gamma=4.0, focal_alpha_normal=1.0, focal_alpha_anomaly=1.2)(
        _logits(), _mask()
    )
    # p_t per pixel: 0.75 (anomaly), 0.5 (normal), 0.75 (normal), 0.8 (anomaly).
    expected = (
        1.2 * 0.25**4 * -math.log(0.75)
        + 1.0 * 0.5**4 * -math.log(0.5)
        + 1.0 * 0.25**4 * -math.log(0.75)
        + 1.2 * 0.2**4 * -math.log(0.8)
    ) / 4
    assert expected == pytest.approx(0.0115556, abs=1e-6)
    assert parts["focal"].item() == pytest.approx(expected, rel=1e-5)


def test_focal_with_smoothing_matches_hand_computation() -> None:
    s = 0.1
    _, parts = _loss(label_smoothing=s, focal_gamma=2.0)(_logits(), _mask())
    # p_t = (1 - s) * p_target + s * p_other + s.
    pts_alphas = [(0.9 * 0.75 + 0.1 * 0.25 + 0.1, 1.2), (0.9 * 0.5 + 0.1 * 0.5 + 0.1, 1.0),
                  (0.9 * 0.75 + 0.1 * 0.25 + 0.1, 1.0), (0.9 * 0.8 + 0.1 * 0.2 + 0.1, 1.2)]
    expected = sum(-a * (1 - pt) ** 2 * math.log(pt) for pt, a in pts_alphas) / 4
    assert parts["focal"].item() == pytest.approx(expected, rel=1e-5)


def test_gamma_zero_is_alpha_weighted_cross_entropy() -> None:
    logits = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    mask = (torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    _, parts = _loss(label_smoothing=0.0, focal_gamma=0.0, focal_alpha_anomaly=1.7)(logits, mask)
    reference = F.cross_entropy(logits, mask.long(), weight=torch.tensor([1.0, 1.7]), reduction="none").mean()
    assert parts["focal"].item() == pytest.approx(reference.item(), rel=1e-5)
    # With smoothing s, gamma = 0: -alpha_t * log((1 - s) p_t + s (1 - p_t) + s).
    s = 1e-2
    _, smoothed = _loss(label_smoothing=s, focal_gamma=0.0, focal_alpha_anomaly=1.7)(logits, mask)
    p = torch.softmax(logits, 1)
    p_t = torch.where(mask.bool(), p[:, 1], p[:, 0])
    alpha = torch.where(mask.bool(), 1.7, 1.0)
    expected = (-alpha * torch.log((1 - s) * p_t + s * (1 - p_t) + s)).mean()
    assert smoothed["focal"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_is_applied_per_class() -> None:
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere
    loss = _loss(focal_alpha_normal=2.0, focal_alpha_anomaly=0.5, label_smoothing=0.0)
    _, normal = loss(logits, torch.zeros(1, 2, 2))
    _, anomalous = loss(logits, torch.ones(1, 2, 2))
    base = 0.5**4 * math.log(2.0)
    assert normal["focal"].item() == pytest.approx(2.0 * base, rel=1e-5)
    assert anomalous["focal"].item() == pytest.approx(0.5 * base, rel=1e-5)


def test_total_is_the_weighted_sum_in_float32() -> None:
    loss = _loss(l1_weight=0.6, focal_weight=0.4)
    total, parts = loss(_logits().bfloat16(), _mask())
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(0.6 * parts["l1"].item() + 0.4 * parts["focal"].item(), rel=1e-6)


def test_shape_errors() -> None:
    loss = _loss()
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"mask must be \(B, H, W\)"):
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2))


def test_gradient_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = resolve_for_category(
        MemSegConfig().with_overrides({"model.backbone_weights": "none", "model.memory_size": 2}), "bottle"
    )
    model = create_model(cfg)
    gen = torch.Generator().manual_seed(0)
    model.build_memory(torch.rand(2, 3, 64, 64, generator=gen))
    images = torch.rand(2, 3, 64, 64, generator=gen)
    mask = torch.zeros(2, 64, 64)
    mask[1, 16:40, 8:32] = 1.0
    images[1, :, 16:40, 8:32] = 1.0  # the "defect": a bright patch
    loss_fn = MemSegLoss(cfg.loss)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    model.train()
    losses = []
    for _ in range(3):
        total, _ = loss_fn(model(images), mask)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    with torch.no_grad():
        final, _ = loss_fn(model(images), mask)
    assert final.item() < 0.8 * losses[0], [*losses, final.item()]
