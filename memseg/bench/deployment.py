"""Deployment runtimes: images per second of the exported graph (``memseg export``) at batch 1 and 8,
in onnxruntime fp32 and INT8 and, when the ``openvino`` package is installed, in OpenVINO fp32 and
INT8 (it reads the same INT8 file), beside the torch figures of the ``inference`` section.

The model is the inference section's (same config, random weights, N memory samples), exported with
its memory comparison and map blur inside. INT8 is calibrated on the bench's training images; the
bench does not gate it (random weights have no accuracy to keep; ``memseg export --int8`` gates).
All runtimes get ``--threads`` threads (None: each runtime's default).
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from memseg.bench.figures import Better, Figure, rate_stats, time_runs
from memseg.bench.report import BenchReport
from memseg.bench.workload import BenchData, BenchSettings, Section, bench_config
from memseg.data.datasets import load_images, load_memory_images, to_tensor
from memseg.errors import ConfigError
from memseg.export.onnx_graph import DEFAULT_OPSET, check_exportable, export_onnx
from memseg.export.quantize import quantize_int8
from memseg.export.runtime import INPUT_NAME, OUTPUT_NAME
from memseg.model import create_model

CALIBRATION_IMAGES = 8


def _figure(runtime: str, precision: str, batch: int) -> Figure:
    return Figure(f"deploy.{runtime}_{precision}_batch{batch}_images_per_s", "images/s", Better.HIGHER,
                  f"{runtime} {precision}, batch {batch} (exported graph, memory comparison included)")


RUNS = tuple((runtime, precision) for runtime in ("onnxruntime", "openvino") for precision in ("fp32", "int8"))
FIGURES = tuple(_figure(r, p, b) for r, p in RUNS for b in (1, 8))


class _Runner(Protocol):
    def __call__(self, images: np.ndarray) -> object: ...


def _onnxruntime(path: Path, threads: int | None) -> _Runner:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle pool threads sleep rather than spin: spinning burns the CPU time the cpu clock counts, and
    # on a shared machine another job's core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})


def _openvino(path: Path, threads: int | None) -> _Runner:
    import openvino  # noqa: PLC0415  # optional: the section records the figures as skipped without it

    # f32: on CPUs with bf16 OpenVINO's default would run the float parts in bf16, and the "fp32" figure
    # would not be fp32 (the same setting as memseg.export.openvino_runtime)
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda images: request.infer({INPUT_NAME: images})


def measure(settings: BenchSettings, data: BenchData, report: BenchReport) -> None:
    if settings.device != "cpu":
        for figure in FIGURES:
            report.skip(figure, "CPU runtimes (measured with --device cpu)")
        return
    cfg = bench_config(settings, data.root)
    try:
        check_exportable(cfg, opset=DEFAULT_OPSET, image_size=None, source="bench model")
    except ConfigError as exc:  # a --set the exporter refuses: the other sections' figures still stand
        for figure in FIGURES:
            report.skip(figure, f"not exportable: {exc}")
        return
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg).eval()
    model.build_memory(load_memory_images(data.memory, settings.size))
    pool = to_tensor(load_images([s.path for s in data.train], settings.size)).numpy()
    has_openvino = importlib.util.find_spec("openvino") is not None
    with tempfile.TemporaryDirectory(prefix="memseg-bench-export-") as tmp:
        files = {"fp32": export_onnx(model, cfg, Path(tmp) / "fp32.onnx", source="bench model")}
        files["int8"] = quantize_int8(files["fp32"], Path(tmp) / "int8.onnx", pool[:CALIBRATION_IMAGES])
        for runtime, precision in RUNS:
            if runtime == "openvino" and not has_openvino:
                for batch in (1, 8):
                    report.skip(_figure(runtime, precision, batch), "the openvino package is not installed")
                continue
            opener = _onnxruntime if runtime == "onnxruntime" else _openvino
            run = opener(files[precision], settings.threads)
            for batch in (1, settings.batch_size):
                images = np.ascontiguousarray(pool[np.arange(batch) % len(pool)])
                repeats = settings.runs if batch > 1 else (10 if settings.quick else 20)
                durations = time_runs(functools.partial(run, images), repeats=repeats,
                                      warmup=max(1, settings.warmup), clock=settings.timer)
                report.add(_figure(runtime, precision, 1 if batch == 1 else 8), rate_stats(durations, batch))


SECTION = Section("deployment", FIGURES, measure)
