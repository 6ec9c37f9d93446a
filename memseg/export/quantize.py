"""INT8 post-training static quantisation of an exported graph (onnxruntime.quantization).

The trainable head's convolutions are quantised (layer4, MSFF and the decoder's first two stages, up1
to db2, at 1/16 and 1/8 of the input size; weights per channel, signed INT8; activations unsigned INT8
in QDQ form, which onnxruntime fuses into integer convolutions). The frozen extractor, the decoder from
up3 on (1/4 of the input size to full size), the logits convolution and the map blur stay float32
(:data:`FP32_MODULES`), and so does everything that is not a convolution: the memory comparison
(subtractions, L1 sums, the argmin selection, the gather of the picked sample), the attention and the
softmax.

Activation ranges are calibrated on images the caller passes: the category's normal training
images (``memseg export`` takes the training split, never validation or test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
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


# Modules whose convolutions stay float32 (the exporter records each node's module path in its
# ``pkg.torch.onnx.name_scopes`` metadata). The extractor: its features are compared with a memory bank
# built in float32, so INT8 noise in them reads as a difference to the memory. The decoder's last three
# stages (up3 to db5): they draw the map's fine structure, and with them in INT8 the learning-test
# carpet lost 0.011 validation AUPRO and bottle 0.030 test AUPRO; with up4 to db5 only, bottle still lost
# 0.006 test AUPRO, while MSFF, the first decoder stage, percentile or entropy calibration, reduce_range
# or more calibration images did not help (docs/export.md, "INT8 variants"). The cost is speed:
# OpenVINO INT8 at batch 8, 256 px on 2 cores runs about 0.74x the all-head INT8 (still about 3.5x fp32).
# The logits convolution and the blur: quantising them puts the anomaly map itself on an 8-bit grid,
# where pixels closer than a step tie and pixel AUROC/AUPRO, which rank pixels, lose what the model knew.
FP32_MODULES = (
    "model.extractor",
    "model.decoder.up3",
    "model.decoder.db3",
    "model.decoder.up4",
    "model.decoder.db4",
    "model.decoder.up5",
    "model.decoder.db5",
    "model.decoder.final",
    "model.smoothing",
)
_SCOPES = "pkg.torch.onnx.name_scopes"


def fp32_convolutions(model: onnx.ModelProto, modules: tuple[str, ...] = FP32_MODULES) -> list[str]:
    """Names of the Conv nodes inside ``modules`` (module paths of the exported ``AnomalyMapGraph``).

    Raises:
        ValueError: the graph's Conv nodes carry no module paths (not written by ``memseg export``).
    """
    keep = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == _SCOPES), None)
        if scopes is None:
            msg = f"Conv node {node.name} has no {_SCOPES} metadata: export the model with memseg export"
            raise ValueError(msg)
        if any(f"'{module}'" in scopes for module in modules):
            keep.append(node.name)
    return keep


class _ImageReader(CalibrationDataReader):
    """Feeds the calibration images to the calibrator, ``batch`` at a time."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self._batches: Iterator[np.ndarray] = (
            np.ascontiguousarray(images[i : i + batch], dtype=np.float32) for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(
    fp32_file: str | Path,
    out: str | Path,
    calibration: np.ndarray,
    *,
    batch: int = 1,
    fp32_modules: tuple[str, ...] = FP32_MODULES,
) -> Path:
    """Write the INT8 copy of an exported fp32 graph.

    Args:
        fp32_file: a file from :func:`memseg.export.onnx_graph.export_onnx`.
        out: the INT8 ``.onnx`` to write.
        calibration: float32 ``(N, 3, H, W)`` images in [0, 1] at the graph's size, N >= 1.
        batch: images per calibration run (the graph's fixed batch size, if it has one).
        fp32_modules: module paths whose convolutions stay float32 (:data:`FP32_MODULES`).

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
        nodes_to_exclude=fp32_convolutions(onnx.load_model(str(fp32_file)), fp32_modules),
    )
    set_metadata(out, {PRECISION_KEY: "int8"})
    return out
