"""Training-time anomaly synthesis (docs/model.md, "Anomaly synthesis"): Perlin masks, foreground masks, texture and
structural sources, transparency blending, and the generator that combines them."""

from memseg.synthesis.anomaly_generator import AnomalyGenerator, worker_rng
from memseg.synthesis.blending import blend
from memseg.synthesis.foreground import ForegroundRule, foreground_for, foreground_mask
from memseg.synthesis.perlin import perlin_mask, perlin_noise
from memseg.synthesis.structure_source import structure_source
from memseg.synthesis.texture_source import (
    DTDTextureSource,
    ProceduralTextureSource,
    TextureSource,
    check_texture_source,
    create_texture_source,
)

__all__ = [
    "AnomalyGenerator",
    "DTDTextureSource",
    "ForegroundRule",
    "ProceduralTextureSource",
    "TextureSource",
    "blend",
    "check_texture_source",
    "create_texture_source",
    "foreground_for",
    "foreground_mask",
    "perlin_mask",
    "perlin_noise",
    "structure_source",
    "worker_rng",
]
