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
    * params ``map_size``: ``model`` (default) or ``input`` (REST: ``"params": {"map_size": "input"}``).
Output: a DataFrame, one row per image, ``score`` (float, the image anomaly score) and
``anomaly_map`` (float32 in [0, 1]; nested lists over REST): ``data.image_size`` square, the model's
resolution, by default; ``(H, W)``, the image's own size, with ``map_size=input``.

Backends (``model_config["backend"]``): ``torch`` (default) rebuilds the network from the checkpoint;
``onnx`` (onnxruntime) and ``openvino`` run the ONNX file ``memseg export --register`` attached to the
registered version this model was loaded from (``openvino`` its OpenVINO IR when ``memseg export
--openvino`` wrote one). ``model_config["precision"]``: ``fp32`` (default), or ``int8`` when the
version's INT8 file passed the accuracy gate. They import no torch: this module imports torch only
inside the torch backend's loader. docs/export.md, "The pyfunc".

Limits: an image over ``max_pixels`` pixels (``model_config``, else ``$MEMSEG_MAX_PIXELS``, else
:data:`DEFAULT_MAX_PIXELS`) is refused; a PNG or JPEG before its pixels are decoded. A bad request
raises :class:`pipelines.request_error.RequestError`, which the scoring server answers with HTTP 400
and the message alone (row and problem; no stack trace, no payload). docs/serving.md has the protocol.

No ``from __future__ import annotations`` here: MLflow reads ``predict``'s type hints at runtime,
and ``pd.DataFrame`` there turns off its type-hint inference (the signature is explicit).
"""

import base64
import binascii
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from memseg.errors import CheckpointError
from pipelines.exported_files import EXPORT_TAGS, download_exported_file
from pipelines.image_header import image_size
from pipelines.request_error import RequestError

if TYPE_CHECKING:
    from memseg.export.runtime import ExportedAnomalyModel

IMAGE_COLUMN = "image"
SCORE_COLUMN = "score"
MAP_COLUMN = "anomaly_map"
CHECKPOINT_ARTIFACT = "checkpoint"
# 16.8 megapixels: MVTec AD's largest images are 1024 x 1024 and a 12-megapixel camera frame still
# fits, while a 4096 x 4096 RGB image is 50 MB decoded, which one worker holds easily.
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PIXELS_ENV = "MEMSEG_MAX_PIXELS"
MAX_PIXELS_KEY = "max_pixels"
MAP_SIZE_PARAM = "map_size"
MAP_SIZES = ("model", "input")
BACKEND_KEY = "backend"
BACKENDS = ("torch", "onnx", "openvino")
PRECISION_KEY = "precision"
THREADS_KEY = "threads"
DEVICE_KEY = "device"
# Logged with the model: MLflow passes a load-time model_config key to the model only when the
# logged model_config has that key, and ignores the others (with a warning). None = not set.
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    BACKEND_KEY: BACKENDS[0], PRECISION_KEY: "fp32", DEVICE_KEY: "auto", THREADS_KEY: None, MAX_PIXELS_KEY: None,
}


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


def _check_pixels(height: int, width: int, index: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        msg = (
            f"image row {index}: {width} x {height} = {width * height:,} pixels is over this model's limit of "
            f"{max_pixels:,} pixels ({MAX_PIXELS_KEY} in model_config, or ${MAX_PIXELS_ENV} where it is served)"
        )
        raise ValueError(msg)


def decode_image(value: Any, index: int = 0, max_pixels: int | None = None) -> np.ndarray:
    """A cell of the ``image`` column -> uint8 RGB ``(H, W, 3)``.

    Args:
        value: base64 PNG/JPEG string (or raw bytes), uint8 array, or a nested list of pixels.
        index: the row, for messages.
        max_pixels: refuse larger images (None: no limit); a PNG/JPEG is measured from its header.

    Raises:
        ValueError: naming the row when the cell is neither a decodable base64 image nor a uint8
            array, or is larger than ``max_pixels``.
    """
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            msg = f"image row {index}: arrays must be uint8, got {value.dtype}"
            raise ValueError(msg)
        if value.ndim >= 2:
            _check_pixels(value.shape[0], value.shape[1], index, max_pixels)
        return value
    if isinstance(value, list):  # a JSON array of pixels
        pixels = np.asarray(value, dtype=np.uint8)
        if pixels.ndim >= 2:
            _check_pixels(pixels.shape[0], pixels.shape[1], index, max_pixels)
        return pixels
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
    header = image_size(raw)
    if header is not None:
        _check_pixels(*header, index, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        msg = f"image row {index}: cannot decode the image bytes (PNG/JPEG expected)"
        raise ValueError(msg)
    if header is None:  # another format OpenCV reads: measured once decoded
        _check_pixels(bgr.shape[0], bgr.shape[1], index, max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _missing_column(columns: list[str]) -> ValueError:
    got = f"got {columns}" if columns else "got no column the model knows"
    return ValueError(f"the request needs a column {IMAGE_COLUMN!r} (one base64 PNG/JPEG per row), {got}")


def images_from_input(model_input: Any, max_pixels: int | None = None) -> list[np.ndarray]:
    """The images of a pyfunc input (DataFrame / dict with an ``image`` column, or arrays).

    Raises:
        ValueError: the column is missing, or a cell is not an image or is over ``max_pixels``.
    """
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise _missing_column([str(c) for c in model_input.columns])
        cells = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise _missing_column([str(k) for k in model_input])
        cells = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim in (2, 3):
        cells = [model_input]
    elif isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim == 4:
        cells = list(model_input)
    else:
        cells = list(model_input)
    return [decode_image(c, i, max_pixels) for i, c in enumerate(cells)]


def signature() -> ModelSignature:
    """Input: string column ``image``; output: ``score`` double and ``anomaly_map`` float[][]; param ``map_size``.

    The column is declared optional: MLflow's own check of a missing required column fails with a
    message that quotes the whole request, so the model checks for it and names it instead.
    """
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN, required=False)]),
        outputs=Schema(
            [ColSpec(DataType.double, SCORE_COLUMN), ColSpec(Array(Array(DataType.float)), MAP_COLUMN)]
        ),
        params=ParamSchema([ParamSpec(MAP_SIZE_PARAM, DataType.string, MAP_SIZES[0])]),
    )


def max_pixels_setting(model_config: dict[str, Any]) -> int:
    """The pixel limit: ``model_config["max_pixels"]`` (unless None), else ``$MEMSEG_MAX_PIXELS``, else the default.

    Raises:
        ValueError: naming the setting when it is not a positive integer.
    """
    if model_config.get(MAX_PIXELS_KEY) is not None:
        raw, where = model_config[MAX_PIXELS_KEY], f"model_config {MAX_PIXELS_KEY}"
    elif os.environ.get(MAX_PIXELS_ENV):
        raw, where = os.environ[MAX_PIXELS_ENV], f"${MAX_PIXELS_ENV}"
    else:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if value <= 0 or isinstance(raw, bool | float):
        msg = f"{where} must be a positive whole number of pixels, got {raw!r}"
        raise ValueError(msg)
    return value


def map_size_param(params: dict[str, Any] | None) -> str:
    """``params["map_size"]`` checked: ``model`` (default) or ``input``.

    Raises:
        ValueError: naming the param and its choices.
    """
    value = (params or {}).get(MAP_SIZE_PARAM) or MAP_SIZES[0]
    if value not in MAP_SIZES:
        msg = f"params {MAP_SIZE_PARAM} must be one of {', '.join(MAP_SIZES)}, got {value!r}"
        raise ValueError(msg)
    return str(value)


def backend_setting(model_config: dict[str, Any]) -> tuple[str, str]:
    """``(backend, precision)`` from ``model_config``: ``torch`` + ``fp32`` unless it says otherwise.

    Raises:
        CheckpointError: naming the key and its choices (``int8`` needs ``onnx`` or ``openvino``).
    """
    backend = str(model_config.get(BACKEND_KEY) or BACKENDS[0])
    if backend not in BACKENDS:
        msg = f"model_config {BACKEND_KEY} must be one of {', '.join(BACKENDS)}, got {backend!r}"
        raise CheckpointError(msg)
    precision = str(model_config.get(PRECISION_KEY) or "fp32")
    choices = ("fp32",) if backend == "torch" else tuple(EXPORT_TAGS)
    if precision not in choices:
        msg = (
            f"model_config {PRECISION_KEY} must be one of {', '.join(choices)} with backend {backend}, "
            f"got {precision!r}"
        )
        raise CheckpointError(msg)
    return backend, precision


def _exported_graph(checkpoint: str, backend: str, precision: str, threads: int | None) -> "ExportedAnomalyModel":
    """The registered version's exported file, downloaded and opened in ``backend``.

    The runtimes are imported here, not at the top: they are optional dependencies (``memseg[export]``)
    that the torch backend does not need. The downloaded file is not kept: the runtime holds the graph.
    """
    with tempfile.TemporaryDirectory(prefix="memseg-pyfunc-onnx-") as tmp:
        uri, path = download_exported_file(checkpoint, precision, Path(tmp), prefer_ir=backend == "openvino")
        try:
            if backend == "onnx":
                from memseg.export.runtime import OnnxAnomalyModel  # noqa: PLC0415  # optional dependency, see above

                return OnnxAnomalyModel(path, threads=threads)
            from memseg.export.openvino_runtime import OpenVinoAnomalyModel  # noqa: PLC0415  # as above

            return OpenVinoAnomalyModel(path, threads=threads)
        except ImportError as exc:
            msg = f"{uri}: backend {backend} needs {exc.name} (pip install 'memseg[export]')"
            raise CheckpointError(msg) from None


class MemSegPyfunc(PythonModel):
    """Scores images with the checkpoint in ``context.artifacts["checkpoint"]``, or its exported file.

    ``model_config``: ``backend`` (``torch`` | ``onnx`` | ``openvino``, default ``torch``),
    ``precision`` (``fp32`` | ``int8``; ``int8`` with ``onnx``/``openvino`` only), ``device`` (torch
    only: ``cpu`` | ``cuda`` | ``auto``, default ``auto``), ``threads`` (onnx/openvino CPU threads)
    and ``max_pixels`` (see :func:`max_pixels_setting`).
    """

    def load_context(self, context: PythonModelContext) -> None:
        model_config = getattr(context, "model_config", None) or {}
        self.max_pixels = max_pixels_setting(model_config)
        self.backend, precision = backend_setting(model_config)
        checkpoint = context.artifacts[CHECKPOINT_ARTIFACT]
        self.graph: ExportedAnomalyModel | None = None
        if self.backend != "torch":
            threads = model_config.get(THREADS_KEY)
            self.graph = _exported_graph(checkpoint, self.backend, precision, int(threads) if threads else None)
            return
        # torch is imported here and only here: the onnx and openvino backends must run without it
        from memseg.inference import load_checkpoint  # noqa: PLC0415  # see the comment above
        from memseg.training import resolve_device  # noqa: PLC0415  # see the comment above

        self.device = resolve_device(str(model_config.get(DEVICE_KEY) or "auto"))
        self.model, self.cfg = load_checkpoint(checkpoint, self.device)

    def _scores_and_maps(self, images: list[np.ndarray], full_size: bool) -> list[tuple[float, np.ndarray]]:
        if self.graph is not None:
            return self.graph.predict(images, full_size=full_size)
        from memseg.inference import predict  # noqa: PLC0415  # torch backend only (load_context imported it)

        predictions = predict(self.model, images, self.cfg, self.device, full_size=full_size)
        return [(p.score, p.anomaly_map) for p in predictions]

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        try:
            full_size = map_size_param(params) == "input"
            images = images_from_input(model_input, self.max_pixels)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        scored = self._scores_and_maps(images, full_size)
        return pd.DataFrame(
            {
                SCORE_COLUMN: [score for score, _ in scored],
                MAP_COLUMN: [anomaly_map for _, anomaly_map in scored],
            }
        )


mlflow.models.set_model(MemSegPyfunc())
