"""The paper's per-category MVTec AD figures, for the leaderboard (docs/report.md, "The paper's figures").

Only the means are confirmed: the paper's abstract gives 99.56 image / 98.84 pixel AUROC. The
per-category values are UNVERIFIED: the paper's table could not be retrieved when this was written,
so they are recalled from it. The image column averages to exactly 99.56, the pixel column to 98.85
(98.84 claimed, within rounding). The report prints this caveat wherever it shows them, and shows
them only for MVTec AD data with a pretrained backbone (:func:`pipelines.provenance.paper_exclusion`).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "Yang et al. 2022, MemSeg (arXiv 2205.00908), Table: MVTec AD per category"
VERIFIED = False
CAVEAT = (
    "Per-category paper figures are UNVERIFIED (recalled from the paper's table, not yet checked against it); "
    "only their means, 99.56 image / 98.84 pixel AUROC, are confirmed by the paper's abstract."
)


@dataclass(frozen=True)
class PaperFigures:
    """Percentages, as printed in the paper."""

    image_auroc: float
    pixel_auroc: float


# (image AUROC %, pixel AUROC %)
_TABLE: dict[str, PaperFigures] = {
    "carpet": PaperFigures(99.6, 99.2),
    "grid": PaperFigures(100.0, 99.3),
    "leather": PaperFigures(100.0, 99.7),
    "tile": PaperFigures(100.0, 99.5),
    "wood": PaperFigures(99.6, 98.0),
    "bottle": PaperFigures(100.0, 99.3),
    "cable": PaperFigures(98.2, 97.4),
    "capsule": PaperFigures(100.0, 99.3),
    "hazelnut": PaperFigures(100.0, 98.8),
    "metal_nut": PaperFigures(100.0, 99.3),
    "pill": PaperFigures(99.0, 99.5),
    "screw": PaperFigures(97.8, 98.0),
    "toothbrush": PaperFigures(100.0, 99.4),
    "transistor": PaperFigures(99.2, 97.3),
    "zipper": PaperFigures(100.0, 98.8),
}

PAPER_MEAN_IMAGE_AUROC = 99.56
PAPER_MEAN_PIXEL_AUROC = 98.84


def paper_figures(category: str) -> PaperFigures | None:
    """The paper's figures for an MVTec category, ``None`` for any other category."""
    return _TABLE.get(category)


def paper_categories() -> tuple[str, ...]:
    return tuple(_TABLE)
