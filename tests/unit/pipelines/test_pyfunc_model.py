"""The pyfunc (models-from-code) round trip, without a server: save, load, predict, compare with memseg.

Also its request checks: the pixel limit (read from the image header), the missing column, and the
error type the scoring server answers with a clean 400 (tests/integration/test_serving.py serves it).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest

from memseg.errors import CheckpointError
from memseg.inference import load_checkpoint, predict
from pipelines import pyfunc_model as pm
from pipelines.image_header import image_size
from pipelines.request_error import RequestError
from tests.helpers.tiny_checkpoint import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


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


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, image: np.ndarray) -> mlflow.pyfunc.PyFuncModel:
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=pm.__file__,
        artifacts={pm.CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=pm.signature(),
        input_example=pd.DataFrame({pm.IMAGE_COLUMN: [pm.encode_png(image)]}),
        pip_requirements=["memseg"],
        model_config={"device": "cpu", pm.MAX_PIXELS_KEY: 100 * 100},
    )
    return mlflow.pyfunc.load_model(str(path))


def test_saved_pyfunc_predicts_like_memseg(loaded: mlflow.pyfunc.PyFuncModel, checkpoint: Path, image: np.ndarray) -> None:
    assert loaded.metadata.get_input_schema().input_names() == [pm.IMAGE_COLUMN]
    frame = pd.DataFrame({pm.IMAGE_COLUMN: [pm.encode_png(image), pm.encode_png(image[:32, :32])]})
    model, cfg = load_checkpoint(checkpoint, "cpu")

    # default: maps at the model's resolution (64 x 64), whatever the image's size
    out = loaded.predict(frame)
    assert list(out.columns) == [pm.SCORE_COLUMN, pm.MAP_COLUMN]
    assert out[pm.MAP_COLUMN][0].shape == (64, 64) and out[pm.MAP_COLUMN][1].shape == (64, 64)
    (small,) = predict(model, [image], cfg, "cpu", full_size=False)
    np.testing.assert_allclose(out[pm.MAP_COLUMN][0], small.anomaly_map, atol=1e-4)  # batch of 2 vs 1: float noise

    # on request: at each image's own size; the score does not depend on it
    full = loaded.predict(frame, params={pm.MAP_SIZE_PARAM: "input"})
    assert full[pm.MAP_COLUMN][0].shape == (48, 80) and full[pm.MAP_COLUMN][1].shape == (32, 32)
    (reference,) = predict(model, [image], cfg, "cpu")
    assert out[pm.SCORE_COLUMN][0] == pytest.approx(reference.score, abs=1e-5)
    assert full[pm.SCORE_COLUMN][0] == pytest.approx(reference.score, abs=1e-5)
    np.testing.assert_allclose(full[pm.MAP_COLUMN][0], reference.anomaly_map, atol=1e-5)

    # uint8 arrays in-process, through the pyfunc's schema enforcement
    arrays = loaded.predict({pm.IMAGE_COLUMN: [image]})
    assert arrays[pm.SCORE_COLUMN][0] == pytest.approx(reference.score, abs=1e-5)


def test_loaded_model_refuses_bad_requests_naming_row_and_problem(
    loaded: mlflow.pyfunc.PyFuncModel, image: np.ndarray
) -> None:
    good = pm.encode_png(image)
    with pytest.raises(RequestError, match=r"needs a column 'image'") as missing:
        loaded.predict(pd.DataFrame({"img": [good]}))
    assert good[:40] not in missing.value.serialize_as_json()
    with pytest.raises(RequestError, match="image row 1: cannot decode the image bytes"):
        loaded.predict(pd.DataFrame({pm.IMAGE_COLUMN: [good, base64.b64encode(b"not an image").decode()]}))
    big = pm.encode_png(np.zeros((101, 100, 3), np.uint8))  # 10,100 pixels, the limit is 10,000
    with pytest.raises(RequestError, match=r"image row 0: 100 x 101 = 10,100 pixels .* limit of 10,000 pixels"):
        loaded.predict(pd.DataFrame({pm.IMAGE_COLUMN: [big]}))
    with pytest.raises(RequestError, match="map_size must be one of model, input, got 'huge'"):
        loaded.predict(pd.DataFrame({pm.IMAGE_COLUMN: [good]}), params={pm.MAP_SIZE_PARAM: "huge"})


@pytest.mark.parametrize(("suffix", "shape"), [(".png", (37, 91)), (".jpg", (300, 7)), (".png", (1, 1))])
def test_image_header_gives_the_decoded_size(suffix: str, shape: tuple[int, int]) -> None:
    ok, buf = cv2.imencode(suffix, np.zeros((*shape, 3), np.uint8))
    assert ok
    assert image_size(buf.tobytes()) == shape
    assert image_size(b"GIF89a...") is None and image_size(buf.tobytes()[:10]) is None


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` and whose pixel data is missing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_oversized_png_is_refused_from_its_header_before_decoding() -> None:
    bomb = base64.b64encode(_png_header_only(100_000, 100_000)).decode()
    # With no limit the same bytes reach the decoder, which fails: so the limit acted on the header.
    with pytest.raises(ValueError, match="cannot decode"):
        pm.decode_image(bomb, 2)
    with pytest.raises(ValueError, match=r"image row 2: 100000 x 100000 = 10,000,000,000 pixels .* 16,777,216"):
        pm.decode_image(bomb, 2, pm.DEFAULT_MAX_PIXELS)


def test_max_pixels_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pm.MAX_PIXELS_ENV, raising=False)
    assert pm.max_pixels_setting({}) == pm.DEFAULT_MAX_PIXELS == 4096 * 4096
    monkeypatch.setenv(pm.MAX_PIXELS_ENV, "2500")
    assert pm.max_pixels_setting({}) == 2500
    assert pm.max_pixels_setting({pm.MAX_PIXELS_KEY: 900}) == 900
    # the logged default model_config holds None: not set, so the environment still decides
    assert pm.max_pixels_setting({pm.MAX_PIXELS_KEY: None}) == 2500
    for bad in ("lots", 0, -1, 2.5, True):
        with pytest.raises(ValueError, match="model_config max_pixels must be a positive whole number"):
            pm.max_pixels_setting({pm.MAX_PIXELS_KEY: bad})
    monkeypatch.setenv(pm.MAX_PIXELS_ENV, "1e6")
    with pytest.raises(ValueError, match=r"\$MEMSEG_MAX_PIXELS must be a positive whole number"):
        pm.max_pixels_setting({})


def test_request_error_answers_400_with_its_own_message() -> None:
    error = RequestError("image row 0: cannot decode the image bytes")
    error.message = "Failed to predict data '<the whole request>'. \nError: " + error.message  # what the server does
    body = json.loads(error.serialize_as_json())
    assert error.get_http_status_code() == 400
    assert body == {"error_code": "INVALID_PARAMETER_VALUE", "message": "image row 0: cannot decode the image bytes"}


def test_backend_setting_defaults_to_torch_fp32_and_names_the_key_it_refuses() -> None:
    assert pm.backend_setting({}) == pm.backend_setting(pm.DEFAULT_MODEL_CONFIG) == ("torch", "fp32")
    assert pm.backend_setting({"backend": "openvino", "precision": "int8"}) == ("openvino", "int8")
    with pytest.raises(CheckpointError, match="model_config backend must be one of torch, onnx, openvino, got 'trt'"):
        pm.backend_setting({"backend": "trt"})
    with pytest.raises(CheckpointError, match="precision must be one of fp32, int8 with backend onnx, got 'bf16'"):
        pm.backend_setting({"backend": "onnx", "precision": "bf16"})
