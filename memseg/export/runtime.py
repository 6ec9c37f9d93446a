"""Run an exported MemSeg graph with onnxruntime alone: no torch is imported here or by what this imports.

The graph maps float32 ``(B, 3, H, W)`` RGB in [0, 1] to the anomaly map ``(B, H, W)`` in [0, 1]
(``MemSeg.anomaly_map``: memory comparison and map blur inside). The config the model was trained
with travels in the file's metadata (:data:`CONFIG_KEY`), so image size and scoring need nothing else.
:class:`ExportedAnomalyModel` is what every runtime shares (input checks, batching, scoring images
of any size); :class:`OnnxAnomalyModel` is onnxruntime's, ``memseg.export.openvino_runtime`` OpenVINO's.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from memseg.config import MemSegConfig
from memseg.data.mvtec import resize_square, to_rgb_u8
from memseg.errors import CheckpointError
from memseg.metrics import image_scores

INPUT_NAME = "image"
OUTPUT_NAME = "anomaly_map"
CONFIG_KEY = "memseg.config"
PRECISION_KEY = "memseg.precision"


class ExportedAnomalyModel(ABC):
    """An exported graph in some runtime, with the config stored in its file.

    Subclasses open the runtime and set :attr:`path`, :attr:`config` and :attr:`precision`; this class
    checks inputs and batches them.
    """

    path: Path
    config: MemSegConfig
    precision: str

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    @abstractmethod
    def fixed_batch(self) -> int | None:
        """The batch size a fixed-batch export takes; None when the batch is dynamic."""

    @abstractmethod
    def _run(self, images: np.ndarray) -> np.ndarray:
        """One batch, already checked: float32 ``(B, 3, H, W)`` -> ``(B, H, W)``."""

    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        """``(B, 3, H, W)`` float in [0, 1] at ``image_size`` -> float32 ``(B, H, W)`` maps in [0, 1]."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size, self.image_size):
            msg = (
                f"{self.path}: expects (B, 3, {self.image_size}, {self.image_size}) float images in [0, 1], "
                f"got shape {images.shape}"
            )
            raise ValueError(msg)
        return self._run(images)

    def predict_maps(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Maps of many images, ``batch_size`` per run: float ``(N, 3, H, W)`` or uint8 ``(N, H, W, 3)`` RGB."""
        if images.dtype == np.uint8:
            images = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        fixed = self.fixed_batch
        step = fixed or batch_size
        chunks = []
        for start in range(0, images.shape[0], step):
            batch = images[start : start + step]
            n = batch.shape[0]
            if fixed and n < fixed:  # a fixed-batch graph takes exactly its batch: pad, then drop the padding
                batch = np.concatenate([batch, np.repeat(batch[-1:], fixed - n, axis=0)])
            chunks.append(self.anomaly_map(batch)[:n])
        if not chunks:
            return np.zeros((0, self.image_size, self.image_size), dtype=np.float32)
        return np.concatenate(chunks)

    def predict(self, images_u8: Sequence[np.ndarray], *, full_size: bool = True) -> list[tuple[float, np.ndarray]]:
        """Score images of any size as :func:`memseg.inference.predict` does, without torch.

        Each image is resized to ``data.image_size``; its score is the mean of the ``eval.top_k``
        highest pixels at that size; its map is resized back to the image's own size when
        ``full_size`` (else it stays ``data.image_size`` square).

        Returns:
            ``(score, float32 map in [0, 1])`` per image.
        """
        rgb = [to_rgb_u8(im) for im in images_u8]
        if not rgb:
            return []
        batch = np.stack([resize_square(im, self.image_size) for im in rgb])
        maps = self.predict_maps(batch, self.config.eval.batch_size)
        scores = image_scores(maps, self.config.eval.top_k)
        out = []
        for image, anomaly_map, score in zip(rgb, maps, scores, strict=True):
            h, w = image.shape[:2]
            if full_size and (h, w) != anomaly_map.shape:
                anomaly_map = cv2.resize(anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append((float(score), np.clip(anomaly_map, 0.0, 1.0).astype(np.float32, copy=False)))
        return out


class OnnxAnomalyModel(ExportedAnomalyModel):
    """An exported graph in an onnxruntime session, with the config stored in it."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        """Open ``path`` on the CPU.

        Args:
            path: an ``.onnx`` file written by :func:`memseg.export.onnx_graph.export_onnx` (or its INT8 copy).
            threads: onnxruntime intra-op threads (None = onnxruntime's default, one per core).

        Raises:
            CheckpointError: naming the file when it is missing, not ONNX, or not a memseg export.
        """
        self.path = Path(path)
        if not self.path.is_file():
            msg = f"{self.path}: ONNX file not found"
            raise CheckpointError(msg)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            msg = f"{self.path}: onnxruntime cannot load it ({exc})"
            raise CheckpointError(msg) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in meta:
            msg = f"{self.path}: not a memseg export (no {CONFIG_KEY!r} metadata)"
            raise CheckpointError(msg)
        self.config = MemSegConfig.model_validate(json.loads(meta[CONFIG_KEY]))
        self.precision = meta.get(PRECISION_KEY, "fp32")

    @property
    def fixed_batch(self) -> int | None:
        size = self.session.get_inputs()[0].shape[0]
        return size if isinstance(size, int) else None

    def _run(self, images: np.ndarray) -> np.ndarray:
        (maps,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return np.asarray(maps, dtype=np.float32)
