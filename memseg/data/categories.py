"""The 15 MVTec AD categories: textures, objects, and which are stored as grayscale images.

The per-category settings live in :mod:`memseg.category_defaults` (below the config, which fills
them in); they are re-exported here for the code that reads them next to the category list.
"""

from __future__ import annotations

from memseg.category_defaults import CategoryDefaults, category_defaults

__all__ = ["CATEGORIES", "GRAYSCALE", "OBJECTS", "TEXTURES", "CategoryDefaults", "category_defaults"]

TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS: tuple[str, ...] = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
CATEGORIES: tuple[str, ...] = TEXTURES + OBJECTS
GRAYSCALE: frozenset[str] = frozenset({"grid", "screw", "zipper"})
