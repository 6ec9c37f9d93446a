"""The 15 MVTec AD categories and the authors' per-category settings (spec sections 1.3, 2.1, 8)."""

from __future__ import annotations

from dataclasses import dataclass

TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS: tuple[str, ...] = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
CATEGORIES: tuple[str, ...] = TEXTURES + OBJECTS
GRAYSCALE: frozenset[str] = frozenset({"grid", "screw", "zipper"})


@dataclass(frozen=True)
class CategoryDefaults:
    """The authors' values for one category; ``None`` config fields resolve to these."""

    memory_size: int = 30
    diff_scale: float = 100.0
    feature_scale: float = 100.0
    use_foreground_mask: bool = False
    foreground_threshold: int = 0
    foreground_bright: bool = False


# [OFF]: N = 120 for screw, 10 for toothbrush; m_scale 1000 for transistor; o_scale 1 for cable and
# transistor. Foreground thresholds from TooTouch's anomaly_mask.json (cable's mask is off there).
_DEFAULTS: dict[str, CategoryDefaults] = {
    **{name: CategoryDefaults() for name in TEXTURES},
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
    """The authors' settings for an MVTec category; a custom (non-MVTec) category gets the texture defaults."""
    return _DEFAULTS.get(category, CategoryDefaults())


def is_texture(category: str) -> bool:
    return category in TEXTURES
