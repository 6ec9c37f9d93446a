"""The authors' per-category settings, which the config's ``None`` fields resolve to.

Kept below both :mod:`memseg.config` (which fills the fields in) and :mod:`memseg.data` (which
lists the categories), so neither has to import the other to know them. See docs/model.md,
"Memory module" and "Anomaly synthesis".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoryDefaults:
    """The authors' values for one category; ``None`` config fields resolve to these."""

    memory_size: int = 30
    diff_scale: float = 100.0
    feature_scale: float = 100.0
    use_foreground_mask: bool = False
    foreground_threshold: int = 0
    foreground_bright: bool = False


# The authors' code: N = 120 for screw, 10 for toothbrush; diff_scale 1000 for transistor;
# feature_scale 1 for cable and transistor. Foreground thresholds from a public reimplementation's
# per-category table (cable's mask is off there). The texture categories (carpet, grid, leather,
# tile, wood) and any custom category take the dataclass defaults: no foreground mask.
_DEFAULTS: dict[str, CategoryDefaults] = {
    "bottle": CategoryDefaults(use_foreground_mask=True, foreground_threshold=250, foreground_bright=False),
    "cable": CategoryDefaults(feature_scale=1.0, foreground_threshold=150, foreground_bright=True),
    "capsule": CategoryDefaults(use_foreground_mask=True, foreground_threshold=120, foreground_bright=False),
    "hazelnut": CategoryDefaults(use_foreground_mask=True, foreground_threshold=50, foreground_bright=True),
    "metal_nut": CategoryDefaults(use_foreground_mask=True, foreground_threshold=40, foreground_bright=True),
    "pill": CategoryDefaults(use_foreground_mask=True, foreground_threshold=100, foreground_bright=True),
    "screw": CategoryDefaults(
        memory_size=120, use_foreground_mask=True, foreground_threshold=110, foreground_bright=False
    ),
    "toothbrush": CategoryDefaults(
        memory_size=10, use_foreground_mask=True, foreground_threshold=30, foreground_bright=True
    ),
    "transistor": CategoryDefaults(
        diff_scale=1000.0, feature_scale=1.0, use_foreground_mask=True, foreground_threshold=90,
        foreground_bright=False,
    ),
    "zipper": CategoryDefaults(use_foreground_mask=True, foreground_threshold=100, foreground_bright=False),
}


def category_defaults(category: str) -> CategoryDefaults:
    """The authors' settings for an MVTec category; a texture or custom category gets the plain defaults."""
    return _DEFAULTS.get(category, CategoryDefaults())
