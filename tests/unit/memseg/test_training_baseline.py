"""The training-free nearest-memory-feature baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memseg.baselines import NearestMemoryBaseline, evaluate_baseline
from memseg.config import MemSegConfig, resolve_for_category
from memseg.data.datasets import category_splits, load_memory_images
from memseg.metrics import keys


def _cfg(root: Path) -> MemSegConfig:
    return resolve_for_category(
        MemSegConfig().with_overrides(
            {
                "data.root": str(root),
                "data.category": "carpet",
                "data.image_size": 64,
                "data.texture_source": "procedural",
                "model.backbone_weights": "none",
                "model.memory_size": 4,
            }
        )
    )


@pytest.mark.usefixtures("torch_threads")
def test_memory_images_score_zero_and_other_images_do_not(synthetic_root: Path) -> None:
    cfg = _cfg(synthetic_root)
    _, splits = category_splits(cfg)
    memory = load_memory_images(splits.memory, 64)
    baseline = NearestMemoryBaseline(cfg)
    baseline.build_memory(memory)
    assert baseline.memory is not None
    assert baseline.memory.shape == (4 * 8 * 8, 128 + 256)  # every layer2-grid location of every image

    own = baseline.anomaly_map(memory)
    assert own.shape == (4, 64, 64)
    others = baseline.anomaly_map(load_memory_images(splits.val, 64))
    # Each memory location finds itself: distance 0 up to cdist's rounding (it expands |a-b|^2).
    assert float(own.abs().max()) < 0.02 * float(others.mean())
    flipped = baseline.anomaly_map(torch.flip(memory, dims=[-1]))
    assert float(flipped.mean()) > 0.0


@pytest.mark.usefixtures("torch_threads")
def test_evaluate_baseline_reports_val_and_test_metrics(synthetic_root: Path) -> None:
    metrics = evaluate_baseline(_cfg(synthetic_root), device="cpu")
    for key in (keys.VAL_IMAGE_AUROC, keys.VAL_PIXEL_AUROC, keys.TEST_IMAGE_AUROC, keys.TEST_PIXEL_AUROC):
        assert 0.0 <= metrics[key] <= 1.0
    # Distances to normal features do find defects: better than chance on pixels.
    assert metrics[keys.TEST_PIXEL_AUROC] > 0.5
    assert any(k.startswith(f"{keys.TEST_IMAGE_AUROC}/") for k in metrics)  # per defect type
