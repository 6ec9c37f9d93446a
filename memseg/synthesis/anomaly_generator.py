"""Training-time anomaly synthesis: mask, source, blend (docs/model.md, "Anomaly synthesis").

One call turns a normal image into a synthetic anomalous one and its ground-truth mask:

1. mask ``M = M_p * M_I``: a Perlin mask (:func:`perlin_mask`) times the category's foreground mask
   (:mod:`foreground`, only for the categories that use one);
2. source: a texture (:class:`TextureSource`, DTD or procedural) with probability
   ``texture_probability``, otherwise the structural source built from the image itself
   (:func:`structure_source`);
3. blend with ``delta ~ U[transparency_min, transparency_max]`` (:func:`blend`).

All randomness comes from the ``numpy.random.Generator`` passed in, so a seed fixes the sample;
:func:`worker_rng` gives each DataLoader worker and epoch its own stream.
"""

from __future__ import annotations

import numpy as np

from memseg.config import SynthesisConfig
from memseg.synthesis.blending import blend
from memseg.synthesis.foreground import foreground_for
from memseg.synthesis.perlin import perlin_mask
from memseg.synthesis.structure_source import structure_source
from memseg.synthesis.texture_source import TextureSource


class AnomalyGenerator:
    """Synthesises MemSeg training anomalies for one category.

    Empty masks (a decision the authors' code leaves open; TooTouch keeps them): the Perlin mask
    alone, or its product with the foreground mask, can come out empty (low-frequency noise that
    never crosses the threshold, or a blob that falls on the background). The Perlin mask is then
    redrawn, up to ``mask_attempts`` draws in all; if every draw is empty, or the image has no
    foreground at all, the normal image is returned unchanged with an all-zero mask. That is a
    valid training sample, because the loss is per pixel: it is simply a normal one.

    Args:
        cfg: Synthesis config. ``None`` foreground fields mean "the category's default" and are
            resolved here from :func:`memseg.data.categories.category_defaults`.
        texture_source: Where texture anomaly sources come from.
        category: Category name (selects the foreground rule).
        mask_attempts: Perlin draws before giving up on a non-empty mask (>= 1).
    """

    def __init__(
        self, cfg: SynthesisConfig, texture_source: TextureSource, category: str, *, mask_attempts: int = 4
    ) -> None:
        if mask_attempts < 1:
            msg = f"mask_attempts must be >= 1, got {mask_attempts}"
            raise ValueError(msg)
        self.cfg = cfg
        self.texture_source = texture_source
        self.category = category
        self.foreground = foreground_for(cfg, category)
        self.mask_attempts = mask_attempts

    def __call__(self, image_u8: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Make one synthetic anomalous sample.

        Args:
            image_u8: uint8 ``(H, W, 3)`` RGB normal image (not modified).
            rng: The only source of randomness.

        Returns:
            ``(image, mask)``: uint8 ``(H, W, 3)`` and float32 ``(H, W)`` with values in {0, 1}.
        """
        if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[2] != 3:
            msg = f"AnomalyGenerator: expected a uint8 (H, W, 3) image, got {image_u8.dtype} {image_u8.shape}"
            raise ValueError(msg)
        cfg = self.cfg
        h, w = image_u8.shape[:2]
        mask = self._mask(image_u8, rng)
        if mask is None:
            return image_u8.copy(), np.zeros((h, w), dtype=np.float32)
        if rng.random() < cfg.texture_probability:
            source = self.texture_source.sample(rng, max(h, w))[:h, :w]
        else:
            source = structure_source(image_u8, rng, cfg)
        delta = float(rng.uniform(cfg.transparency_min, cfg.transparency_max))
        return blend(image_u8, source, mask, delta), mask

    def _mask(self, image_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A non-empty ``M_p * M_I``, or None when none was found within ``mask_attempts`` draws."""
        shape = image_u8.shape[:2]
        fg = self.foreground(image_u8) if self.foreground is not None else None
        if fg is not None and not fg.any():
            return None
        for _ in range(self.mask_attempts):
            mask = perlin_mask(rng, shape, self.cfg)
            if fg is not None:
                mask *= fg
            if mask.any():
                return mask
        return None


def worker_rng(base_seed: int, worker_id: int, epoch: int) -> np.random.Generator:
    """The synthesis generator of one DataLoader worker in one epoch.

    Built from ``SeedSequence([base_seed, worker_id, epoch])``, so streams of different workers and
    epochs are statistically independent, and a run with the same seed repeats exactly.
    Negative seeds are mapped into the unsigned 64-bit range (SeedSequence needs non-negative entropy).
    """
    entropy = [int(base_seed) % 2**64, int(worker_id) % 2**64, int(epoch) % 2**64]
    return np.random.default_rng(np.random.SeedSequence(entropy))
