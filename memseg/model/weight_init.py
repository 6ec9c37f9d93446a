"""Weight initialisation of the trainable heads (MSFF and decoder).

``default`` (``model.head_init``, the default) keeps PyTorch's initialisation, which is what the
authors' code runs: their ``Init()`` iterates its ``Sequential`` containers rather than their modules,
so it never matches a conv or BN. ``normal`` applies the values that ``Init()`` names: conv weights
N(0, 0.02) and conv biases 0, BN weights N(1, 0.02) and biases 0. See docs/model.md, "Decoder".
"""

from __future__ import annotations

from torch import nn


def init_head_weights(module: nn.Module, scheme: str) -> None:
    """Initialise every conv and BN inside ``module`` in place.

    Args:
        module: the head to initialise.
        scheme: ``"default"`` (keep PyTorch's init) or ``"normal"``.
    """
    if scheme == "default":
        return
    if scheme != "normal":
        msg = f"model.head_init: unknown scheme {scheme!r} (expected 'default' or 'normal')"
        raise ValueError(msg)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
