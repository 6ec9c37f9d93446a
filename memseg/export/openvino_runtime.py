"""Run an exported MemSeg graph with OpenVINO on the CPU: no torch, no onnxruntime session.

OpenVINO reads the ``.onnx`` file ``memseg export`` writes (fp32 or INT8) directly. It does not
carry ONNX metadata into its model, so the config and precision are read from the file with the
``onnx`` package. The float parts are compiled in float32 (``INFERENCE_PRECISION_HINT``): OpenVINO
would otherwise run them in bf16 on CPUs that have it, and the maps would no longer match the fp32
graph's. See docs/export.md, "OpenVINO".
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


class OpenVinoAnomalyModel(ExportedAnomalyModel):
    """An exported graph compiled by OpenVINO for the CPU, with the config stored in the file."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        """Read and compile ``path``.

        Args:
            path: an ``.onnx`` file written by ``memseg export`` (fp32 or INT8).
            threads: OpenVINO inference threads (None = OpenVINO's default, one per core).

        Raises:
            CheckpointError: naming the file when it is missing, not ONNX, or not a memseg export.
        """
        self.path = Path(path)
        if not self.path.is_file():
            msg = f"{self.path}: ONNX file not found"
            raise CheckpointError(msg)
        try:
            proto = onnx.load_model(str(self.path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and others from protobuf
            msg = f"{self.path}: not an ONNX file ({exc})"
            raise CheckpointError(msg) from None
        meta = {p.key: p.value for p in proto.metadata_props}
        if CONFIG_KEY not in meta:
            msg = f"{self.path}: not a memseg export (no {CONFIG_KEY!r} metadata)"
            raise CheckpointError(msg)
        self.config = MemSegConfig.model_validate(json.loads(meta[CONFIG_KEY]))
        self.precision = meta.get(PRECISION_KEY, "fp32")
        settings: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = int(threads)
        core = openvino.Core()
        try:
            self.model = core.read_model(str(self.path))
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
