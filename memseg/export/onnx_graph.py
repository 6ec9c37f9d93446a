"""``MemSeg.anomaly_map`` as one ONNX graph: normalisation, extractor, memory bank, heads and map blur.

Exported with torch's dynamo-based exporter (``torch.onnx.export(dynamo=True)``, the default of
torch 2.9+): the legacy TorchScript exporter traces the model too, but its translation of the memory
bank gave maps 0.3 off torch's, where the dynamo graph matches to 1e-6. The memory bank computes its
per-sample L1 distances from subtractions and sums while exporting (``MemoryBank.export_friendly``;
ONNX has no cdist); the selection (ArgMin) and the gather of the picked sample are ordinary ONNX ops.
See docs/model.md, "Memory module", and docs/export.md.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from memseg.config import MemSegConfig
from memseg.errors import CheckpointError, ConfigError
from memseg.export.runtime import CONFIG_KEY, INPUT_NAME, OUTPUT_NAME, PRECISION_KEY
from memseg.model import MemSeg

log = logging.getLogger(__name__)

# The dynamo exporter writes opset 18 and later; 18 is what onnxruntime and OpenVINO both run.
MIN_OPSET = 18
MAX_OPSET = 23
DEFAULT_OPSET = 18


class AnomalyMapGraph(nn.Module):
    """The module that is exported: ``images (B, 3, H, W) in [0, 1] -> MemSeg.anomaly_map (B, H, W)``."""

    def __init__(self, model: MemSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.anomaly_map(images)


@contextmanager
def _export_friendly(model: MemSeg) -> Iterator[None]:
    previous = model.memory.export_friendly
    model.memory.export_friendly = True
    try:
        yield
    finally:
        model.memory.export_friendly = previous


def check_exportable(cfg: MemSegConfig, *, opset: int, image_size: int | None, source: str) -> None:
    """Refuse what cannot be exported, naming the field or file.

    Raises:
        ConfigError: an opset outside :data:`MIN_OPSET`..:data:`MAX_OPSET`, or ``model.memory_match=nearest``
            without ``model.memory_coreset`` or ``model.memory_window``.
        CheckpointError: ``image_size`` given and not the checkpoint's ``data.image_size``.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        msg = f"opset {opset} is not supported: the exporter writes opset {MIN_OPSET} to {MAX_OPSET}"
        raise ConfigError(msg)
    bounded = cfg.model.memory_coreset is not None or cfg.model.memory_window is not None
    if cfg.model.memory_match == "nearest" and not bounded:
        msg = (
            f"{source}: model.memory_match=nearest with neither model.memory_coreset nor model.memory_window set "
            "cannot be exported (every location against every location of every memory sample is too large a "
            "graph: at 256 px and 30 memory images, layer1 alone is 4,096 x 122,880 distances per image); train "
            "with model.memory_window (e.g. 3), model.memory_coreset (e.g. 2048) or model.memory_match=aligned"
        )
        raise ConfigError(msg)
    if image_size is not None and image_size != cfg.data.image_size:
        msg = (
            f"{source}: the checkpoint was trained at data.image_size={cfg.data.image_size}, not the requested "
            f"{image_size} (its memory bank holds features of that size; export at {cfg.data.image_size})"
        )
        raise CheckpointError(msg)


def export_onnx(
    model: MemSeg,
    cfg: MemSegConfig,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    batch_size: int | None = None,
    source: str = "<model>",
) -> Path:
    """Write ``model``'s anomaly map as an ONNX file, with ``cfg`` in its metadata.

    Args:
        model: a MemSeg with its memory built (e.g. :func:`memseg.inference.load_checkpoint`).
        cfg: its config (stored in the file: image size, scoring).
        out: the ``.onnx`` file to write (folders created).
        opset: ONNX opset, :data:`MIN_OPSET`..:data:`MAX_OPSET`.
        batch_size: a fixed batch size, or None for a dynamic batch dimension.
        source: how to name the model in errors (the checkpoint path or registry URI).

    Returns:
        ``out``.
    """
    check_exportable(cfg, opset=opset, image_size=None, source=source)
    if batch_size is not None and batch_size < 1:
        msg = f"batch_size must be >= 1 or None (dynamic), got {batch_size}"
        raise ConfigError(msg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = cfg.data.image_size
    example = torch.rand(batch_size or 2, 3, size, size)
    graph = AnomalyMapGraph(model.cpu().eval()).eval()
    dynamic = None if batch_size else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    optimizer_log = logging.getLogger("onnxscript")
    level = optimizer_log.level
    # onnxscript logs one INFO line per memory sample and level it leaves unfolded (hundreds at 256 px)
    optimizer_log.setLevel(max(level, logging.WARNING))
    try:
        with _export_friendly(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes, not the user's concern
            program = torch.onnx.export(
                graph, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, verbose=False,
            )
    finally:
        optimizer_log.setLevel(level)
    if program is None:
        msg = f"{source}: the ONNX exporter returned no program"
        raise CheckpointError(msg)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {CONFIG_KEY: cfg.model_dump_json(), PRECISION_KEY: "fp32"})
    onnx.save_model(proto, str(out))
    log.info("exported %s to %s (opset %d, batch %s)", source, out, opset, batch_size or "dynamic")
    return out
