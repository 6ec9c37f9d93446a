"""Multi-scale feature fusion (MSFF) with coordinate attention, the authors' ``Aggregate`` module.

Per level k with ``CI_k`` of ``C = 2 * C_k`` channels:
conv3x3 C->C + BN + ReLU, multiplied by the coordinate-attention weights of ``CI_k``, then
conv3x3 C->C/2 + BN + ReLU and conv3x3 C/2->C/2 + BN + ReLU. With ``model.msff_fusion`` the levels are
fused top-down (``F_2 += UpConv(F_3)``, then ``F_1 += UpConv(F_2)``; UpConv = bilinear x2 with
``align_corners=True``, conv3x3, BN, ReLU). Each output is multiplied by its spatial attention map.
See docs/model.md, "Multi-scale feature fusion".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from memseg.model.coord_attention import CoordinateAttention


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3 (padding 1) + BN + ReLU, the building block of MSFF and the decoder."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpConv(nn.Module):
    """Bilinear upsampling (``align_corners=True``) to a given size, then conv3x3 + BN + ReLU.

    The authors use ``Upsample(scale_factor=2)``; upsampling to the skip's size is the same for inputs
    divisible by 32 and keeps odd sizes from breaking the concatenation.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """``(B, C_in, h, w) -> (B, C_out, *size)``."""
        return self.conv(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True))


class MSFFLevel(nn.Module):
    """One level of MSFF: ``(B, C, H, W) -> (B, C/2, H, W)`` with C = 2 * C_k."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_in = conv_bn_relu(channels, channels)
        self.attention = CoordinateAttention(channels)
        self.conv_out = nn.Sequential(conv_bn_relu(channels, channels // 2), conv_bn_relu(channels // 2, channels // 2))

    def forward(self, ci: Tensor) -> Tensor:
        return self.conv_out(self.conv_in(ci) * self.attention(ci))


class MultiScaleFeatureFusion(nn.Module):
    """MSFF over the three levels, finest first."""

    def __init__(self, level_channels: Sequence[int], *, fusion: bool = True) -> None:
        """Build the block.

        Args:
            level_channels: backbone channels C_k of layer1..layer3 (``(64, 128, 256)``); the inputs
                ``CI_k`` have ``2 * C_k`` channels and the outputs ``C_k``.
            fusion: top-down fusion (``model.msff_fusion``).
        """
        super().__init__()
        self.level_channels = tuple(int(c) for c in level_channels)
        self.fusion = fusion
        self.levels = nn.ModuleList(MSFFLevel(2 * c) for c in self.level_channels)
        # up[k] brings level k+1 down to level k's channels (256->128, 128->64 for ResNet18).
        self.up = nn.ModuleList(
            UpConv(self.level_channels[k + 1], self.level_channels[k]) for k in range(len(self.level_channels) - 1)
        )

    def forward(self, concatenated: Sequence[Tensor], attention: Sequence[Tensor]) -> list[Tensor]:
        """Fuse the levels.

        Args:
            concatenated: ``CI_k`` ``(B, 2 * C_k, H_k, W_k)``, finest first.
            attention: ``M_k`` ``(B, 1, H_k, W_k)``, finest first.

        Returns:
            ``F_k * M_k`` ``(B, C_k, H_k, W_k)``, finest first.
        """
        fused = [level(ci) for level, ci in zip(self.levels, concatenated, strict=True)]
        if self.fusion:
            for k in range(len(fused) - 2, -1, -1):
                fused[k] = fused[k] + self.up[k](fused[k + 1], fused[k].shape[-2:])
        return [f * m.to(f.dtype) for f, m in zip(fused, attention, strict=True)]
