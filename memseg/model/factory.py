"""The single entry point that builds a MemSeg from the config."""

from __future__ import annotations

from memseg.config import MemSegConfig
from memseg.errors import ConfigError
from memseg.model.feature_extractor import create_backbone
from memseg.model.memseg import MemSeg

_RESOLVED_FIELDS = ("memory_size", "diff_scale", "feature_scale")


def create_model(cfg: MemSegConfig, *, load_backbone_weights: bool = True) -> MemSeg:
    """Build MemSeg (memory still empty: call ``build_memory`` or load a state dict).

    Args:
        cfg: the config, already passed through ``resolve_for_category``.
        load_backbone_weights: False skips ``model.backbone_weights`` (no download, no file read,
            no warning) and builds the architecture only; for loading a checkpoint's state dict,
            which holds the backbone weights and the memory too.

    Raises:
        ConfigError: naming the ``model.*`` key that is unresolved (``None``) or cannot be honoured.
    """
    for name in _RESOLVED_FIELDS:
        if getattr(cfg.model, name) is None:
            msg = f"model.{name}: is None; resolve the config for its category (resolve_for_category) first"
            raise ConfigError(msg)
    backbone = create_backbone(cfg.model.backbone, cfg.model.backbone_weights, load_weights=load_backbone_weights)
    return MemSeg(backbone, cfg.model)
