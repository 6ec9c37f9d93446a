"""Spatial attention maps built from the memory differences (docs/model.md, "Spatial attention").

``m_k = mean_c(DI_k)``; ``M_3 = m_3``, ``M_2 = m_2 * Up(m_3)``, ``M_1 = m_1 * Up(m_2) * Up(m_3)``,
exactly as the authors' code computes them: every coarser map is upsampled straight to the target level's size
(bilinear, ``align_corners=False``) and multiplied in. (The paper's recursive form
``M_1 = m_1 * Up(M_2)`` differs only by interpolation rounding.) No normalisation and no sigmoid:
``model.diff_scale`` sets the gain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def spatial_attention(differences: Sequence[Tensor]) -> list[Tensor]:
    """Attention maps from the per-level differences.

    Args:
        differences: ``DI_k`` ``(B, C_k, H_k, W_k)``, finest level first (layer1, layer2, layer3).

    Returns:
        ``M_k`` ``(B, 1, H_k, W_k)``, finest level first.
    """
    means = [d.mean(dim=1, keepdim=True) for d in differences]
    maps = []
    for k, base in enumerate(means):
        out = base
        for coarser in means[k + 1 :]:
            out = out * F.interpolate(coarser, size=base.shape[-2:], mode="bilinear", align_corners=False)
        maps.append(out)
    return maps
