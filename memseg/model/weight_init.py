"""Weight initialisation of the trainable heads (MSFF and decoder).

``normal`` (``model.head_init``): conv weights N(0, 0.02) and conv biases 0, BN weights N(1, 0.02) and
biases 0, the values the authors' ``Init()`` names. Their ``Init()`` iterates its ``Sequential``
containers rather than their modules, so it never matches a conv or BN and leaves PyTorch's default
init in effect; ``default`` reproduces that. See docs/model.md, "Deviations from the authors' code".
"""

from __future__ import annotations

from torch import nn


def init_head_weights(module: nn.Module, scheme: str) -> None:
    """Initialise every conv and BN inside ``module`` in place.

    Args:
        module: the head to initialise.
        scheme: ``"normal"`` or ``"default"`` (keep PyTorch's init).
    """
    if scheme == "default":
        return
    if scheme != "normal":
        msg = f"model.head_init: unknown scheme {scheme!r} (expected 'normal' or 'default')"
        raise ValueError(msg)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
