"""Gaussian smoothing of the anomaly map (docs/model.md, "Evaluation and scoring").

The authors' code scores the raw softmax map. Its pixel scores are noisy at the scale of a few
pixels, which costs little on image AUROC but much on pixel AUROC and AUPRO; a Gaussian blur of the
map, as PatchCore and PaDiM apply in anomalib, lifted both on every category we measured
(docs/quality.md, section 6), so ``model.map_smoothing_sigma`` defaults to 4 and 0 restores the
authors' map. The blur belongs to the model, not the metric code, so validation, test, ``memseg
predict``, serving and export all see the same map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MapSmoothing(nn.Module):
    """Separable Gaussian blur of ``(B, H, W)`` maps; sigma in pixels of the map, 0 = identity.

    The kernel reaches 4 sigma either side (as OpenCV and anomalib size it) and reflects at the border
    (no dark or bright frame). On a map smaller than the kernel the kernel is cut to the map and
    renormalised.
    """

    kernel: Tensor

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma < 0:
            msg = f"map smoothing sigma must be >= 0, got {sigma}"
            raise ValueError(msg)
        self.sigma = float(sigma)
        self.radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2) if sigma > 0 else torch.ones(1)
        # Not persistent: derived from the config, so checkpoints keep the same state_dict keys.
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        if self.radius == 0:
            return maps
        height, width = maps.shape[-2:]
        radius = min(self.radius, height - 1, width - 1)
        if radius < 1:
            return maps
        kernel = self.kernel[self.radius - radius : self.radius + radius + 1].to(maps.dtype)
        kernel = kernel / kernel.sum()
        x = maps.unsqueeze(1)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
        return x[:, 0]

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"
