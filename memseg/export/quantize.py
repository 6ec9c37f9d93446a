"""INT8 post-training static quantisation of an exported graph (onnxruntime.quantization).

Only the convolutions are quantised (weights per channel, signed INT8; activations unsigned INT8 in
QDQ form, which onnxruntime fuses into integer convolutions): they are nearly all of the arithmetic
(docs/performance.md). The memory comparison (subtractions, L1 sums, the argmin selection and the
gather of the picked sample), the attention, the softmax and the map blur stay float32: the
selection compares sums of ~10^5 terms whose differences INT8 rounding would swamp.

Activation ranges are calibrated on images the caller passes: the category's normal training
images (``memseg export`` takes the training split, never validation or test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from memseg.export.metadata import set_metadata
from memseg.export.runtime import INPUT_NAME, PRECISION_KEY

QUANTISED_OPS = ("Conv",)


class _ImageReader(CalibrationDataReader):
    """Feeds the calibration images to the calibrator, ``batch`` at a time."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self._batches: Iterator[np.ndarray] = (
            np.ascontiguousarray(images[i : i + batch], dtype=np.float32) for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_file: str | Path, out: str | Path, calibration: np.ndarray, *, batch: int = 1) -> Path:
    """Write the INT8 copy of an exported fp32 graph.

    Args:
        fp32_file: a file from :func:`memseg.export.onnx_graph.export_onnx`.
        out: the INT8 ``.onnx`` to write.
        calibration: float32 ``(N, 3, H, W)`` images in [0, 1] at the graph's size, N >= 1.
        batch: images per calibration run (the graph's fixed batch size, if it has one).

    Returns:
        ``out``.
    """
    if calibration.ndim != 4 or calibration.shape[0] < 1 or calibration.shape[1] != 3:
        msg = f"calibration images must be (N >= 1, 3, H, W) floats in [0, 1], got shape {calibration.shape}"
        raise ValueError(msg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32_file),
        str(out),
        _ImageReader(calibration, batch),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTISED_OPS),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    set_metadata(out, {PRECISION_KEY: "int8"})
    return out
