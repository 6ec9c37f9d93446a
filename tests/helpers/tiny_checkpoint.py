"""A small untrained MemSeg checkpoint (64 px, memory of 2 random images) for tests of what loads one."""

from __future__ import annotations

from pathlib import Path

import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.model import create_model
from memseg.training.checkpoint import save_model


def save_tiny_checkpoint(folder: Path, category: str = "tile") -> Path:
    """Write ``folder/best_model.pt``: random backbone, 64 px, seeded, so every call writes the same model."""
    torch.manual_seed(0)
    cfg = resolve_for_category(
        MemSegConfig().with_overrides(
            {"model.backbone_weights": "none", "data.image_size": 64, "model.memory_size": 2, "data.category": category}
        )
    )
    model = create_model(cfg)
    model.build_memory(torch.rand(2, 3, 64, 64))
    return save_model(folder / "best_model.pt", model, cfg, 1, {})
