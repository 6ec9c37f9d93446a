"""The pyfunc (models-from-code) round trip, without a server: save, load, predict, compare with memseg."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.inference import load_checkpoint, predict
from memseg.model import create_model
from memseg.training.checkpoint import save_model
from pipelines import pyfunc_model as pm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = resolve_for_category(
        MemSegConfig().with_overrides(
            {"model.backbone_weights": "none", "data.image_size": 64, "model.memory_size": 2, "data.category": "tile"}
        )
    )
    model = create_model(cfg)
    model.build_memory(torch.rand(2, 3, 64, 64))
    return save_model(tmp_path_factory.mktemp("ckpt") / "best_model.pt", model, cfg, 1, {})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)


def test_png_round_trip_is_lossless(image: np.ndarray) -> None:
    back = pm.decode_image(pm.encode_png(image))
    np.testing.assert_array_equal(back, image)


def test_decode_errors_name_the_row() -> None:
    with pytest.raises(ValueError, match="image row 3: cannot decode"):
        pm.decode_image("aGVsbG8=", 3)  # base64 of "hello"
    with pytest.raises(ValueError, match="image row 0: arrays must be uint8"):
        pm.decode_image(np.zeros((4, 4, 3), np.float32))


def test_saved_pyfunc_predicts_like_memseg(tmp_path: Path, checkpoint: Path, image: np.ndarray) -> None:
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=pm.__file__,
        artifacts={pm.CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=pm.signature(),
        input_example=pd.DataFrame({pm.IMAGE_COLUMN: [pm.encode_png(image)]}),
        pip_requirements=["memseg"],
        model_config={"device": "cpu"},
    )
    loaded = mlflow.pyfunc.load_model(str(path))
    assert loaded.metadata.get_input_schema().input_names() == [pm.IMAGE_COLUMN]

    out = loaded.predict(pd.DataFrame({pm.IMAGE_COLUMN: [pm.encode_png(image), pm.encode_png(image[:32, :32])]}))
    assert list(out.columns) == [pm.SCORE_COLUMN, pm.MAP_COLUMN]
    assert out[pm.MAP_COLUMN][0].shape == (48, 80) and out[pm.MAP_COLUMN][1].shape == (32, 32)

    model, cfg = load_checkpoint(checkpoint, "cpu")
    (reference,) = predict(model, [image], cfg, "cpu")
    assert out[pm.SCORE_COLUMN][0] == pytest.approx(reference.score, abs=1e-5)
    np.testing.assert_allclose(out[pm.MAP_COLUMN][0], reference.anomaly_map, atol=1e-5)

    # uint8 arrays in-process, through the pyfunc's schema enforcement
    arrays = loaded.predict({pm.IMAGE_COLUMN: [image]})
    assert arrays[pm.SCORE_COLUMN][0] == pytest.approx(reference.score, abs=1e-5)
