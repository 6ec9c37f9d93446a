"""Coordinate attention (Hou et al., CVPR 2021) as used in MemSeg's MSFF.

The authors' ``CoordAtt`` returns only the attention weights ``a_h * a_w``; the caller multiplies
them into the conv branch (the TooTouch reimplementation multiplies by the input as well, which the
authors' code does not). See docs/model.md, "Multi-scale feature fusion".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CoordinateAttention(nn.Module):
    """Direction-aware channel attention weights: ``(B, C, H, W) -> (B, C, H, W)`` in (0, 1)."""

    def __init__(self, channels: int, reduction: int = 32, min_mip: int = 8) -> None:
        """Build the block.

        Args:
            channels: input and output channels C.
            reduction: mip = max(min_mip, C // reduction) (8, 8, 16 for C = 128, 256, 512).
            min_mip: lower bound of the bottleneck width.
        """
        super().__init__()
        mip = max(min_mip, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()  # h-swish: x * ReLU6(x + 3) / 6
        self.conv_h = nn.Conv2d(mip, channels, kernel_size=1)
        self.conv_w = nn.Conv2d(mip, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Attention weights for ``x`` ``(B, C, H, W)``.

        Returns:
            ``a_h * a_w`` ``(B, C, H, W)``.
        """
        h, w = x.shape[-2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()  # (B, C, H, 1)
        a_w = self.conv_w(y_w.transpose(2, 3)).sigmoid()  # (B, C, 1, W)
        return a_h * a_w
