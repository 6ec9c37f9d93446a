"""The anomaly map's Gaussian blur (``model.map_smoothing_sigma``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.inference import load_checkpoint
from memseg.model import create_model
from memseg.model.map_smoothing import MapSmoothing
from memseg.training.checkpoint import model_payload

N_MEMORY = 2


def test_blur_matches_opencv_with_reflected_borders() -> None:
    maps = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    for sigma in (1.0, 2.5, 4.0):
        ours = MapSmoothing(sigma)(maps).numpy()
        radius = int(4 * sigma + 0.5)
        theirs = np.stack([
            cv2.GaussianBlur(m, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma, sigmaY=sigma,
                             borderType=cv2.BORDER_REFLECT_101)
            for m in maps.numpy()
        ])
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_sigma_zero_is_the_raw_map_and_blurred_maps_stay_probabilities() -> None:
    maps = torch.rand(2, 32, 32)
    assert torch.equal(MapSmoothing(0)(maps), maps)
    blurred = MapSmoothing(4)(maps)
    assert blurred.shape == maps.shape
    assert float(blurred.min()) >= 0.0 and float(blurred.max()) <= 1.0
    assert float(blurred.std()) < float(maps.std())  # it smooths
    constant = torch.full((1, 32, 32), 0.3)
    torch.testing.assert_close(MapSmoothing(4)(constant), constant)
    # A map smaller than the kernel (radius 16 here) is still blurred, with a cut kernel.
    small = MapSmoothing(4)(torch.rand(1, 8, 8))
    assert small.shape == (1, 8, 8) and torch.isfinite(small).all()
    with pytest.raises(ValueError, match="sigma"):
        MapSmoothing(-1)


def _model(sigma: float) -> torch.nn.Module:
    cfg = resolve_for_category(MemSegConfig().with_overrides(
        {"model.backbone_weights": "none", "model.memory_size": N_MEMORY, "model.map_smoothing_sigma": sigma}
    ), "bottle")
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    model.build_memory(torch.rand(N_MEMORY, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return model


def test_the_models_map_is_the_blurred_softmax_and_the_weights_do_not_change() -> None:
    raw, blurred = _model(0.0), _model(4.0)
    assert raw.state_dict().keys() == blurred.state_dict().keys()
    blurred.load_state_dict(raw.state_dict())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = MapSmoothing(4.0)(raw.anomaly_map(x))
        torch.testing.assert_close(blurred.anomaly_map(x), expected)
        assert not torch.allclose(raw.anomaly_map(x), expected)


def test_a_checkpoint_saved_before_the_field_existed_keeps_its_raw_map(tmp_path: Path) -> None:
    model = _model(0.0)
    cfg = resolve_for_category(MemSegConfig().with_overrides(
        {"model.backbone_weights": "none", "model.memory_size": N_MEMORY, "model.map_smoothing_sigma": 0.0}
    ), "bottle")
    payload = model_payload(model, cfg, step=1)
    del payload["config"]["model"]["map_smoothing_sigma"]
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    loaded, loaded_cfg = load_checkpoint(path)
    assert loaded_cfg.model.map_smoothing_sigma == 0.0
    assert MemSegConfig().model.map_smoothing_sigma == 4.0  # while new configs blur
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.anomaly_map(x), model.anomaly_map(x))
