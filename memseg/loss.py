"""The MemSeg training loss: weighted L1 + focal loss on the softmax output (docs/model.md, "Loss").

``total = l1_weight * L1 + focal_weight * focal``, both on ``p = softmax(logits)`` computed once
(no second softmax inside the focal term, a bug older reimplementations had), in float32.

Focal term, as the authors' ``loss_fun.FocalLoss`` (Hsuxu's probability-input focal loss), per pixel with
target class ``t`` in {0, 1} and ``s = label_smoothing``, C = 2 classes:

* smoothed one-hot ``y_c = clamp(onehot(t)_c, s / (C - 1), 1 - s)``, i.e. ``1 - s`` for the target
  class and ``s`` for the other;
* ``p_t = sum_c y_c * p_c + s`` (the added ``s`` keeps ``log`` finite; ``p_t`` lies in ``[2s, 1]``);
* ``focal = -alpha_t * (1 - p_t)^gamma * log(p_t)``, ``alpha = [focal_alpha_normal,
  focal_alpha_anomaly]`` indexed by the target class (the authors' default alpha is ``[1, 1.2]``, not
  normalised);
* averaged over all pixels of the batch.

With ``gamma = 0`` it is the alpha-weighted cross-entropy of the smoothed ``p_t``.
L1 term: ``mean |p_1 - mask|`` over all pixels (``torch.nn.L1Loss`` on the anomaly channel).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memseg.config import LossConfig


class MemSegLoss(nn.Module):
    """L1 + focal loss for the 2-class MemSeg logits."""

    alpha: Tensor

    def __init__(self, cfg: LossConfig) -> None:
        """Take weights, gamma, alpha and smoothing from ``cfg`` (the ``loss`` config section)."""
        super().__init__()
        self.l1_weight = float(cfg.l1_weight)
        self.focal_weight = float(cfg.focal_weight)
        self.gamma = float(cfg.focal_gamma)
        self.smoothing = float(cfg.label_smoothing)
        self.register_buffer(
            "alpha", torch.tensor([cfg.focal_alpha_normal, cfg.focal_alpha_anomaly], dtype=torch.float32),
            persistent=False,
        )

    def forward(self, logits: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            logits: ``(B, 2, H, W)`` network output (any float dtype).
            mask: ``(B, H, W)`` ground truth, 1 = anomalous pixel (values > 0.5 count as anomalous
                for the focal term; the L1 term uses the values as they are).

        Returns:
            ``(total, {"l1": L1, "focal": focal})``, float32 scalars (the parts are detached).
        """
        if logits.ndim != 4 or logits.shape[1] != 2:
            msg = f"MemSegLoss: logits must be (B, 2, H, W), got {tuple(logits.shape)}"
            raise ValueError(msg)
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(mask.shape) != expected:
            msg = f"MemSegLoss: mask must be (B, H, W) = {expected}, got {tuple(mask.shape)}"
            raise ValueError(msg)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            prob = torch.softmax(logits.float(), dim=1)
            target = mask.float()
            l1 = (prob[:, 1] - target).abs().mean()
            focal = self._focal(prob, target > 0.5)
            total = self.l1_weight * l1 + self.focal_weight * focal
        return total, {"l1": l1.detach(), "focal": focal.detach()}

    def _focal(self, prob: Tensor, anomalous: Tensor) -> Tensor:
        s = self.smoothing
        # With C = 2 the clamp [s/(C-1), 1-s] puts 1-s on the target class and s on the other.
        p_target = torch.where(anomalous, prob[:, 1], prob[:, 0])
        p_other = torch.where(anomalous, prob[:, 0], prob[:, 1])
        pt = (1.0 - s) * p_target + s * p_other + s if s > 0 else p_target
        alpha = self.alpha.to(prob.device)[anomalous.long()]
        # 1 - pt >= 0 mathematically; the clamp keeps rounding from feeding a negative base to a
        # fractional gamma.
        modulating = (1.0 - pt).clamp_min(0.0).pow(self.gamma)
        return -(alpha * modulating * pt.log()).mean()
