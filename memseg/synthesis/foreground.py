"""Foreground masks M_I that keep synthetic anomalies on the object (docs/model.md, "Anomaly synthesis").

The input image is converted to grayscale and binarised at a fixed per-category threshold with
OpenCV ``THRESH_BINARY`` semantics (pixels ``> threshold`` are 1). When ``bright`` is True that set
is the foreground (TooTouch ``bg_reverse = true``, e.g. hazelnut on a dark background); otherwise
the foreground is the pixels ``<= threshold`` (dark object on a bright background, e.g. bottle).
The final anomaly mask is ``M = M_p * M_I``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from memseg.category_defaults import category_defaults
from memseg.config import SynthesisConfig
from memseg.errors import ConfigError


def foreground_mask(image_u8: np.ndarray, threshold: int, bright: bool) -> np.ndarray:
    """Binary foreground mask of an image.

    Args:
        image_u8: uint8 ``(H, W, 3)`` RGB or ``(H, W)`` grayscale.
        threshold: Grey level in [0, 255].
        bright: True: pixels ``> threshold`` are foreground; False: pixels ``<= threshold`` are.

    Returns:
        float32 ``(H, W)`` with values in {0, 1}.
    """
    if image_u8.dtype != np.uint8:
        msg = f"foreground_mask: expected a uint8 image, got {image_u8.dtype}"
        raise ValueError(msg)
    if image_u8.ndim == 3:
        gray = cv2.cvtColor(image_u8, cv2.COLOR_RGB2GRAY)
    elif image_u8.ndim == 2:
        gray = image_u8
    else:
        msg = f"foreground_mask: expected (H, W, 3) or (H, W), got shape {image_u8.shape}"
        raise ValueError(msg)
    mode = cv2.THRESH_BINARY if bright else cv2.THRESH_BINARY_INV
    _, mask = cv2.threshold(gray, int(threshold), 1, mode)
    return mask.astype(np.float32)


@dataclass(frozen=True)
class ForegroundRule:
    """A resolved per-category foreground setting; call it on an image to get its mask."""

    threshold: int
    bright: bool

    def __call__(self, image_u8: np.ndarray) -> np.ndarray:
        """float32 ``(H, W)`` {0, 1} foreground mask of ``image_u8`` (see :func:`foreground_mask`)."""
        return foreground_mask(image_u8, self.threshold, self.bright)


def foreground_for(cfg: SynthesisConfig, category: str | None = None) -> ForegroundRule | None:
    """The foreground rule of a config, or None when foreground masking is off.

    Fields left at ``None`` ("category default") are filled from
    :func:`memseg.category_defaults.category_defaults` when ``category`` is given.

    Raises:
        ConfigError: a field is still ``None`` and no category was given to resolve it.
    """
    defaults = category_defaults(category) if category is not None else None

    def pick(name: str) -> int | bool:
        value = getattr(cfg, name)
        if value is None:
            if defaults is None:
                msg = (
                    f"synthesis.{name}: is None (category default) but no category was given; "
                    "call memseg.config.resolve_for_category first"
                )
                raise ConfigError(msg)
            value = getattr(defaults, name)
        return value

    if not pick("use_foreground_mask"):
        return None
    return ForegroundRule(threshold=int(pick("foreground_threshold")), bright=bool(pick("foreground_bright")))
