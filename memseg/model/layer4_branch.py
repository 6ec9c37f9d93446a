"""The trainable layer4 branch that feeds the decoder.

Decision: the authors' code runs a second, complete ResNet18 (``Encoder``) whose only trainable part
is layer4, end to end from the image. Here the frozen extractor's layer3 output is fed into a
trainable copy of layer4 initialised from the same backbone weights. The stem and layers 1-3 of the
authors' second ResNet are frozen copies of the extractor's, so in eval mode the result is identical
to theirs; it costs half the backbone compute, and the frozen BN layers of the second copy cannot
drift in train mode (in the authors' code they switch to batch statistics under ``model.train()``).
Only layer4's own BN layers follow ``train()``/``eval()``, as they do there. See docs/model.md,
"Deviations from the authors' code".
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from memseg.model.feature_extractor import feature_info


class Layer4Branch(nn.Module):
    """A trainable copy of a ResNet's layer4: ``(B, C3, H/16, W/16) -> (B, C4, H/32, W/32)``.

    Attributes:
        out_channels: channels of the output (512 for ResNet18), from timm's ``feature_info``.
    """

    def __init__(self, backbone: nn.Module) -> None:
        """Copy ``backbone.layer4`` (with its current weights) and make it trainable."""
        super().__init__()
        info = {entry["module"]: entry for entry in feature_info(backbone)}
        self.out_channels: int = int(info["layer4"]["num_chs"])
        self.layer4 = copy.deepcopy(backbone.get_submodule("layer4"))
        for param in self.layer4.parameters():
            param.requires_grad_(True)

    def forward(self, layer3: Tensor) -> Tensor:
        """Run layer4 on the frozen layer3 features.

        Args:
            layer3: ``(B, C3, H/16, W/16)`` from the frozen extractor (no grad).

        Returns:
            ``(B, C4, H/32, W/32)``.
        """
        return self.layer4(layer3)
