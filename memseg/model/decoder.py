"""The authors' 5-stage U-Net decoder (docs/model.md, "Decoder").

"up" = bilinear x2 (``align_corners=True``) + conv3x3 + BN + ReLU; "db" = two conv3x3 + BN + ReLU.
For ResNet18 and a 256 px input:

====  =====================================================  ============
up1   512@8 -> 256                                            256@16
db1   cat MSFF3 (256) -> 512 -> 256 -> 256                    256@16
up2   256 -> 128; db2 cat MSFF2 (128) -> 256 -> 128 -> 128    128@32
up3   128 -> 64;  db3 cat MSFF1 (64) -> 128 -> 64 -> 64       64@64
up4   64 -> 32;   db4 cat stem (64) -> 96 -> 48 -> 48         48@128
up5   48 -> 48;   db5 48 -> 24 -> 24                          24@256
final conv 24->24 + BN + ReLU, conv 24->2 (logits)            2@256
====  =====================================================  ============

The deep stages take their widths from the skips (so other ResNets work); the last three widths
(32, 48, 24) are the authors' constants. Their unused SE and "shortcut" convs are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from memseg.model.msff import UpConv, conv_bn_relu

# The authors' widths of the two full-resolution stages.
UP4_CHANNELS = 32
DB4_CHANNELS = 48
DB5_CHANNELS = 24


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """The "db" block: two conv3x3 + BN + ReLU."""
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class UNetDecoder(nn.Module):
    """Decodes layer4 with the MSFF outputs and the stem feature as skips, to 2-class logits."""

    def __init__(
        self, bottom_channels: int, msff_channels: Sequence[int], stem_channels: int, num_classes: int = 2
    ) -> None:
        """Build the decoder.

        Args:
            bottom_channels: channels of the layer4 branch (512 for ResNet18).
            msff_channels: channels of MSFF1..MSFF3, finest first (``(64, 128, 256)``).
            stem_channels: channels of the stem feature (64).
            num_classes: output channels (2: normal, anomaly).
        """
        super().__init__()
        c1, c2, c3 = (int(c) for c in msff_channels)
        self.up1 = UpConv(bottom_channels, c3)
        self.db1 = double_conv(2 * c3, c3)
        self.up2 = UpConv(c3, c2)
        self.db2 = double_conv(2 * c2, c2)
        self.up3 = UpConv(c2, c1)
        self.db3 = double_conv(2 * c1, c1)
        self.up4 = UpConv(c1, UP4_CHANNELS)
        self.db4 = double_conv(UP4_CHANNELS + stem_channels, DB4_CHANNELS)
        self.up5 = UpConv(DB4_CHANNELS, DB4_CHANNELS)
        self.db5 = double_conv(DB4_CHANNELS, DB5_CHANNELS)
        self.final = nn.Sequential(
            conv_bn_relu(DB5_CHANNELS, DB5_CHANNELS),
            nn.Conv2d(DB5_CHANNELS, num_classes, kernel_size=3, padding=1),
        )

    def forward(
        self, bottom: Tensor, msff: Sequence[Tensor], stem: Tensor, out_size: Sequence[int]
    ) -> Tensor:
        """Decode.

        Args:
            bottom: layer4 output ``(B, C4, H/32, W/32)``.
            msff: MSFF1..MSFF3 ``(B, C_k, H/r_k, W/r_k)``, finest first.
            stem: the stem feature ``(B, C0, H/2, W/2)``, relu(bn1(conv1(x))).
            out_size: ``(H, W)`` of the input image.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        f1, f2, f3 = msff
        x = self.db1(torch.cat([self.up1(bottom, f3.shape[-2:]), f3], dim=1))
        x = self.db2(torch.cat([self.up2(x, f2.shape[-2:]), f2], dim=1))
        x = self.db3(torch.cat([self.up3(x, f1.shape[-2:]), f1], dim=1))
        x = self.db4(torch.cat([self.up4(x, stem.shape[-2:]), stem.to(x.dtype)], dim=1))
        x = self.db5(self.up5(x, out_size))
        return self.final(x)
