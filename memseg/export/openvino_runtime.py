"""Run an exported MemSeg graph with OpenVINO on the CPU: no torch, no onnxruntime session.

OpenVINO reads the ``.onnx`` file ``memseg export`` writes (fp32 or INT8) directly, or its OpenVINO IR
copy (``.xml`` + ``.bin``, :func:`save_ir`, ``memseg export --openvino``), which compiles faster and
ran the INT8 graph about a fifth faster when measured (docs/export.md, "OpenVINO"). OpenVINO does not
carry ONNX metadata into its model, so the config and precision are read from an ``.onnx`` file with
the ``onnx`` package, and :func:`save_ir` writes them into the IR's runtime info. The float parts
are compiled in float32 (``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise run them in bf16 on
CPUs that have it, and the maps would no longer match the fp32 graph's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import openvino

from memseg.config import MemSegConfig
from memseg.errors import CheckpointError
from memseg.export.runtime import CONFIG_KEY, INPUT_NAME, PRECISION_KEY, ExportedAnomalyModel

IR_SUFFIX = ".xml"


def save_ir(onnx_file: str | Path, out: str | Path) -> Path:
    """Convert an exported ``.onnx`` file to OpenVINO IR: ``out`` (``.xml``) and its ``.bin`` beside it.

    The weights stay float32 (no fp16 compression); the config and precision travel in the IR.

    Raises:
        CheckpointError: naming the file when it is not a memseg export or OpenVINO cannot convert it.
    """
    meta = _onnx_metadata(Path(onnx_file))
    try:
        model = openvino.convert_model(str(onnx_file))
    except Exception as exc:  # the converter raises its own exception types
        msg = f"{onnx_file}: OpenVINO cannot convert it ({exc})"
        raise CheckpointError(msg) from None
    for key in (CONFIG_KEY, PRECISION_KEY):
        if key in meta:
            model.set_rt_info(meta[key], [key])
    out = Path(out)
    openvino.save_model(model, str(out), compress_to_fp16=False)
    return out


def _onnx_metadata(path: Path) -> dict[str, str]:
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others from protobuf
        msg = f"{path}: not an ONNX file ({exc})"
        raise CheckpointError(msg) from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if CONFIG_KEY not in meta:
        msg = f"{path}: not a memseg export (no {CONFIG_KEY!r} metadata)"
        raise CheckpointError(msg)
    return meta


class OpenVinoAnomalyModel(ExportedAnomalyModel):
    """An exported graph compiled by OpenVINO for the CPU, with the config stored in the file."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        """Read and compile ``path``.

        Args:
            path: an ``.onnx`` file written by ``memseg export`` (fp32 or INT8), or its IR ``.xml``.
            threads: OpenVINO inference threads (None = OpenVINO's default, one per core).

        Raises:
            CheckpointError: naming the file when it is missing, not ONNX or IR, or not a memseg export.
        """
        self.path = Path(path)
        if not self.path.is_file():
            msg = f"{self.path}: {'IR' if self.path.suffix == IR_SUFFIX else 'ONNX'} file not found"
            raise CheckpointError(msg)
        core = openvino.Core()
        if self.path.suffix == IR_SUFFIX:
            try:
                self.model = core.read_model(str(self.path))
            except RuntimeError as exc:
                msg = f"{self.path}: OpenVINO cannot read it (its .bin beside it?) ({exc})"
                raise CheckpointError(msg) from None
            if not self.model.has_rt_info([CONFIG_KEY]):
                msg = f"{self.path}: not a memseg export (no {CONFIG_KEY!r} runtime info)"
                raise CheckpointError(msg)
            meta = {k: self.model.get_rt_info([k]).astype(str) for k in (CONFIG_KEY, PRECISION_KEY)
                    if self.model.has_rt_info([k])}
        else:
            meta = _onnx_metadata(self.path)
            try:
                self.model = core.read_model(str(self.path))
            except RuntimeError as exc:
                msg = f"{self.path}: OpenVINO cannot read it ({exc})"
                raise CheckpointError(msg) from None
        self.config = MemSegConfig.model_validate(json.loads(meta[CONFIG_KEY]))
        self.precision = meta.get(PRECISION_KEY, "fp32")
        settings: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(self.model, "CPU", settings)
        except RuntimeError as exc:
            msg = f"{self.path}: OpenVINO cannot compile it ({exc})"
            raise CheckpointError(msg) from None
        self.request = self.compiled.create_infer_request()

    @property
    def fixed_batch(self) -> int | None:
        size = self.model.input(INPUT_NAME).get_partial_shape()[0]
        return None if size.is_dynamic else int(size.get_length())

    def _run(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer({INPUT_NAME: images})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)
