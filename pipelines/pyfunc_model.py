"""The registered model: an MLflow pyfunc over a MemSeg checkpoint, logged as code.

Why a pyfunc and not ``mlflow.pytorch``: MLflow 3's pytorch flavour defaults to ``torch.export``
(pt2), and the memory-bank nearest-neighbour selection is data dependent; pickling the module
instead would tie the model to class paths. A pyfunc carries one artifact, the ``best_model.pt``
checkpoint (weights, memory bank buffers, config; ``torch.load(weights_only=True)``), and rebuilds the
network with :func:`memseg.inference.load_checkpoint`, so loading needs only the ``memseg``
package, never a pickled closure.

Models-from-code: MLflow copies THIS FILE into the model and executes it on load; the
``mlflow.models.set_model(...)`` call at the bottom is what it looks for. That call is the module's
one deliberate import-time action (it only stores a reference inside ``mlflow.models``).

Input (signature: one string column ``image``):
    * a DataFrame with a column ``image`` whose cells are base64 PNG/JPEG strings (REST:
      ``{"dataframe_split": {"columns": ["image"], "data": [["iVBOR..."]]}}``) or uint8 arrays
      ``(H, W, 3)`` RGB / ``(H, W)`` gray (in-process, e.g. ``model.predict({"image": [array]})``).
Output: a DataFrame, one row per image, ``score`` (float, the image anomaly score) and
``anomaly_map`` (float32 ``(H, W)`` in [0, 1] at the image's own size; nested lists over REST).

No ``from __future__ import annotations`` here: MLflow reads ``predict``'s type hints at runtime,
and ``pd.DataFrame`` there turns off its type-hint inference (the signature is explicit).
"""

import base64
import binascii
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from memseg.inference import load_checkpoint, predict
from memseg.training import resolve_device

IMAGE_COLUMN = "image"
SCORE_COLUMN = "score"
MAP_COLUMN = "anomaly_map"
CHECKPOINT_ARTIFACT = "checkpoint"


def encode_png(image_u8: np.ndarray) -> str:
    """uint8 RGB ``(H, W, 3)`` (or gray ``(H, W)``) -> base64 PNG string, lossless."""
    image = np.asarray(image_u8)
    if image.dtype != np.uint8:
        msg = f"images must be uint8, got {image.dtype}"
        raise ValueError(msg)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        msg = f"cannot PNG-encode an image of shape {image.shape}"
        raise ValueError(msg)
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_image(value: Any, index: int = 0) -> np.ndarray:
    """A cell of the ``image`` column -> uint8 RGB ``(H, W, 3)``.

    Raises:
        ValueError: naming the row when the cell is neither a decodable base64 image nor a uint8 array.
    """
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            msg = f"image row {index}: arrays must be uint8, got {value.dtype}"
            raise ValueError(msg)
        return value
    if isinstance(value, list):  # a JSON array of pixels
        return np.asarray(value, dtype=np.uint8)
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as exc:
            msg = f"image row {index}: not base64 ({exc})"
            raise ValueError(msg) from exc
    else:
        msg = f"image row {index}: expected a base64 string or a uint8 array, got {type(value).__name__}"
        raise ValueError(msg)
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        msg = f"image row {index}: cannot decode the image bytes (PNG/JPEG expected)"
        raise ValueError(msg)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def images_from_input(model_input: Any) -> list[np.ndarray]:
    """The images of a pyfunc input (DataFrame / dict with an ``image`` column, or arrays)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            msg = f"input needs a column {IMAGE_COLUMN!r}, got {list(model_input.columns)}"
            raise ValueError(msg)
        cells = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, dict):
        cells = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim in (2, 3):
        cells = [model_input]
    elif isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim == 4:
        cells = list(model_input)
    else:
        cells = list(model_input)
    return [decode_image(c, i) for i, c in enumerate(cells)]


def signature() -> ModelSignature:
    """Input: string column ``image``; output: ``score`` double and ``anomaly_map`` float[][]."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]),
        outputs=Schema(
            [ColSpec(DataType.double, SCORE_COLUMN), ColSpec(Array(Array(DataType.float)), MAP_COLUMN)]
        ),
    )


class MemSegPyfunc(PythonModel):
    """Scores images with the checkpoint in ``context.artifacts["checkpoint"]``.

    ``model_config={"device": "cpu" | "cuda" | "auto"}`` picks the device (default ``auto``).
    """

    def load_context(self, context: PythonModelContext) -> None:
        device = resolve_device(str((getattr(context, "model_config", None) or {}).get("device", "auto")))
        self.device = device
        self.model, self.cfg = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], device)

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        images = images_from_input(model_input)
        predictions = predict(self.model, images, self.cfg, self.device)
        return pd.DataFrame(
            {
                SCORE_COLUMN: [p.score for p in predictions],
                MAP_COLUMN: [p.anomaly_map for p in predictions],
            }
        )


mlflow.models.set_model(MemSegPyfunc())
