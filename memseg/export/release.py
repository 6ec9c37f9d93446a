"""Export one checkpoint for deployment: the fp32 graph and, if it passes the gate, its INT8 copy.

The steps of ``memseg export`` without the command line: load the model, export fp32
(:mod:`memseg.export.onnx_graph`), calibrate INT8 on the category's normal training images (the
training split: neither the memory, the validation nor the test images), score both graphs on the
validation set and let :func:`memseg.export.gate.int8_gate` decide. An INT8 graph that fails the
gate is deleted, so what is left in the folder is what may be deployed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memseg.config import MemSegConfig
from memseg.data.datasets import category_splits, load_images, to_tensor
from memseg.errors import MemSegError
from memseg.evaluation import load_split
from memseg.export.gate import DEFAULT_MARGIN, GateResult, int8_gate
from memseg.export.metadata import set_metadata
from memseg.export.onnx_graph import DEFAULT_OPSET, check_exportable, export_onnx
from memseg.export.openvino_runtime import IR_SUFFIX, OpenVinoAnomalyModel, save_ir
from memseg.export.quantize import quantize_int8
from memseg.export.runtime import ExportedAnomalyModel, OnnxAnomalyModel
from memseg.inference import load_checkpoint
from memseg.metrics import compute_metrics

log = logging.getLogger(__name__)

FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and decided.

    Attributes:
        fp32: the fp32 graph.
        int8: the INT8 graph, None when not asked for or refused by the gate.
        gate: the gate's figures, None when INT8 was not asked for.
        calibration_images: how many training images calibrated INT8.
        notes: what else was decided (printed by ``memseg export``).
        openvino: the OpenVINO IR ``.xml`` files written (each with its ``.bin``).
        openvino_gate: the INT8 IR's own gate figures (OpenVINO's INT8 kernels are not onnxruntime's).
    """

    fp32: Path
    int8: Path | None = None
    gate: GateResult | None = None
    calibration_images: int = 0
    notes: list[str] = field(default_factory=list)
    openvino: list[Path] = field(default_factory=list)
    openvino_gate: GateResult | None = None


def calibration_images(cfg: MemSegConfig, limit: int) -> np.ndarray:
    """Up to ``limit`` normal images of the category's training split, float32 ``(N, 3, H, W)`` in [0, 1].

    Raises:
        MemSegError: naming the category folder when the training split is empty.
    """
    _, splits = category_splits(cfg)
    samples = splits.train[:limit] if limit > 0 else splits.train
    if not samples:
        msg = f"{cfg.data.root}/{cfg.data.category}: no training images to calibrate INT8 on"
        raise MemSegError(msg)
    return to_tensor(load_images([s.path for s in samples], cfg.data.image_size)).numpy()


def split_figures(runtime: ExportedAnomalyModel, cfg: MemSegConfig, split: str) -> dict[str, float]:
    """Overall metrics of an exported graph on the ``val`` or ``test`` split of ``cfg``'s category."""
    data = load_split(cfg, "val" if split == "val" else "test")
    maps = runtime.predict_maps(data.images.numpy(), cfg.eval.batch_size)
    return compute_metrics(
        maps, data.masks, data.labels, None, top_k=cfg.eval.top_k, fpr_limit=cfg.eval.aupro_fpr_limit
    )


def gate_int8(
    fp32_file: Path,
    int8_file: Path,
    cfg: MemSegConfig,
    *,
    margin: float = DEFAULT_MARGIN,
    with_test: bool = False,
    threads: int | None = None,
) -> GateResult:
    """Score both graphs on the validation split (and the test split, reported beside) and decide."""
    fp32 = OnnxAnomalyModel(fp32_file, threads=threads)
    int8 = OnnxAnomalyModel(int8_file, threads=threads)
    test_fp32 = split_figures(fp32, cfg, "test") if with_test else None
    test_int8 = split_figures(int8, cfg, "test") if with_test else None
    return int8_gate(
        split_figures(fp32, cfg, "val"), split_figures(int8, cfg, "val"), margin,
        test_fp32=test_fp32, test_int8=test_int8,
    )


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    source: str | None = None,
    opset: int = DEFAULT_OPSET,
    batch_size: int | None = None,
    image_size: int | None = None,
    int8: bool = False,
    margin: float = DEFAULT_MARGIN,
    calibration_limit: int = 32,
    data_root: str | None = None,
    with_test: bool = False,
    threads: int | None = None,
    openvino_ir: bool = False,
) -> ExportReport:
    """Export a checkpoint to ``out_dir`` (:data:`FP32_FILE`, and :data:`INT8_FILE` if the gate passes).

    Args:
        checkpoint: the checkpoint file or folder.
        out_dir: created if needed.
        source: how to name the model in messages (default: the checkpoint path).
        opset, batch_size: see :func:`memseg.export.onnx_graph.export_onnx`.
        image_size: when given, the checkpoint must have been trained at this size.
        int8: also quantise, calibrate and gate.
        margin: the gate's largest accepted drop of validation pixel AUROC and AUPRO.
        calibration_limit: at most this many training images calibrate (0 = all).
        data_root: the dataset root when it moved since training (``data.root``).
        with_test: also measure the test split (reported, never used by the gate).
        threads: onnxruntime threads for the gate's scoring.
        openvino_ir: also write OpenVINO IR copies (``model_fp32.xml``, and ``model_int8.xml`` when the
            INT8 IR passes the gate too).
    """
    label = source or str(checkpoint)
    model, cfg = load_checkpoint(checkpoint)
    if data_root:
        cfg = cfg.with_overrides({"data.root": data_root})
    check_exportable(cfg, opset=opset, image_size=image_size, source=label)
    out = Path(out_dir)
    report = ExportReport(export_onnx(model, cfg, out / FP32_FILE, opset=opset, batch_size=batch_size, source=label))
    if openvino_ir:
        report.openvino.append(save_ir(report.fp32, report.fp32.with_suffix(IR_SUFFIX)))
    if not int8:
        return report
    calibration = calibration_images(cfg, calibration_limit)
    report.calibration_images = int(calibration.shape[0])
    int8_file = quantize_int8(report.fp32, out / INT8_FILE, calibration, batch=batch_size or 1)
    report.gate = gate_int8(report.fp32, int8_file, cfg, margin=margin, with_test=with_test, threads=threads)
    if report.gate.passed:
        set_metadata(int8_file, report.gate.tags())
        report.int8 = int8_file
        if openvino_ir:
            _int8_ir(report, cfg, margin)
    else:
        int8_file.unlink()
    log.info("%s", report.gate.summary())
    return report


def _int8_ir(report: ExportReport, cfg: MemSegConfig, margin: float) -> None:
    """The INT8 IR, kept only if its own validation figures pass the gate against the fp32 graph's.

    OpenVINO's converter and INT8 kernels compute the quantised graph differently from onnxruntime
    (maps differ by ~1e-5 on average), so the IR is gated itself rather than trusted on the
    onnxruntime INT8 graph's verdict.
    """
    assert report.int8 is not None and report.gate is not None
    xml = save_ir(report.int8, report.int8.with_suffix(IR_SUFFIX))
    gate = int8_gate(report.gate.fp32, split_figures(OpenVinoAnomalyModel(xml), cfg, "val"), margin)
    report.openvino_gate = gate
    if gate.passed:
        report.openvino.append(xml)
        report.notes.append(f"OpenVINO IR {gate.summary()}")
    else:
        xml.unlink()
        xml.with_suffix(".bin").unlink(missing_ok=True)
        report.notes.append(f"OpenVINO IR {gate.summary()}; model_int8.xml not written")
