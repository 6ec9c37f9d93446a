"""A briefly trained MemSeg checkpoint (64 px, random frozen backbone, a few SGD steps) for export tests."""

from __future__ import annotations

import functools
from pathlib import Path

from memseg.config import MemSegConfig
from memseg.training import fit

BRIEF_TRAINING = {
    "data.image_size": 64,
    "data.texture_source": "procedural",
    "data.val_min_images": 4,
    "data.val_anomalies_per_image": 2,
    "data.num_workers": 0,
    "model.backbone_weights": "none",
    "model.memory_size": 4,
    "train.device": "cpu",
    "train.steps": 6,
    "train.batch_size": 4,
    "train.eval_interval": 6,
    "train.seed": 0,
    "eval.heatmap_samples": 0,
}


def train_briefly(root: Path, out: Path, category: str = "carpet") -> Path:
    """Train on ``root/category`` for a few steps; return the output folder (``best_model.pt`` inside)."""
    cfg = MemSegConfig().with_overrides(
        {**BRIEF_TRAINING, "data.root": str(root), "data.category": category, "train.output_dir": str(out)}
    )
    fit(cfg, progress=False)
    return out


@functools.cache
def brief_export(root: Path, work: Path) -> tuple[Path, Path]:
    """Train briefly and export fp32 once per test process: ``(checkpoint folder, model_fp32.onnx)``.

    Cached so the export tests of several modules share one training run and one export (each takes
    seconds to tens of seconds on a shared CPU).
    """
    from memseg.export.onnx_graph import export_onnx
    from memseg.inference import load_checkpoint

    run = train_briefly(root, work / "run")
    model, cfg = load_checkpoint(run)
    return run, export_onnx(model, cfg, work / "export" / "model_fp32.onnx", source=str(run))
