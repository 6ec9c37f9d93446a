"""Batched anomaly maps and the metrics of one evaluation set (see docs/model.md, "Evaluation and scoring").

The anomaly map is the model's softmax channel 1, blurred by ``model.map_smoothing_sigma``; the
metrics come from :func:`memseg.metrics.compute_metrics`. Used by the training loop (validation and
test), :mod:`memseg.inference`, and through :func:`evaluate_split` by ``memseg evaluate``, the
registration of a sweep winner and the promotion gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from memseg.config import EvalConfig, MemSegConfig
from memseg.data.datasets import EvalSet, build_validation_set, category_splits, load_test_set
from memseg.data.mvtec import list_category
from memseg.errors import MemSegError
from memseg.metrics import compute_metrics

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
Split = Literal["test", "val"]
SPLITS: tuple[Split, ...] = ("test", "val")


def inference_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of an inference ``precision``.

    ``fp32`` (the default everywhere, and what validation and test metrics use): none. ``bf16``:
    bfloat16 autocast for the trainable head (layer4, MSFF, decoder) on CUDA or on CPUs with
    AVX512-BF16/AMX, about 1.7x the CPU throughput; the frozen extractor and the memory comparison
    stay float32 (see :mod:`memseg.model.feature_extractor`), and maps move by a few 1e-3.

    Raises:
        ValueError: naming the precision when it is not one of :data:`PRECISIONS`.
    """
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    msg = f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
    raise ValueError(msg)


def _batch_to_tensor(images: Any, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Images ``[start, stop)`` as float ``(B, 3, H, W)`` in [0, 1] on ``device``."""
    if isinstance(images, torch.Tensor):
        batch = images[start:stop].to(device, non_blocking=True)
    elif isinstance(images, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:stop])).to(device)
    else:
        batch = torch.from_numpy(np.stack([np.asarray(im) for im in images[start:stop]])).to(device)
    if batch.dtype == torch.uint8:
        if batch.ndim != 4 or batch.shape[-1] != 3:
            msg = f"uint8 images must be RGB (N, H, W, 3), got shape {tuple(batch.shape)}"
            raise ValueError(msg)
        # Converted on the device: uint8 is a quarter of the float32 transfer.
        return batch.permute(0, 3, 1, 2).float().div_(255.0)
    if batch.ndim != 4 or batch.shape[1] != 3:
        msg = f"float images must be (N, 3, H, W) in [0, 1], got shape {tuple(batch.shape)}"
        raise ValueError(msg)
    return batch.float()


def _spatial_shape(images: Any) -> tuple[int, int]:
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4:
        return (0, 0)
    uint8 = str(getattr(images, "dtype", "")).endswith("uint8")
    return (int(shape[1]), int(shape[2])) if uint8 else (int(shape[2]), int(shape[3]))


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def predict_maps(
    model: nn.Module,
    images: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    batch_size: int,
    device: torch.device | str | None = None,
    *,
    precision: str = "fp32",
) -> np.ndarray:
    """Anomaly maps of many images, batch by batch, in eval mode and without gradients.

    The model's train/eval mode is restored afterwards, so the training loop can call this mid-run.

    Args:
        model: a MemSeg (anything with ``anomaly_map(x (B, 3, H, W)) -> (B, H, W)``), memory built.
        images: float ``(N, 3, H, W)`` in [0, 1] (tensor or array), uint8 ``(N, H, W, 3)`` RGB, or a
            list of uint8 ``(H, W, 3)`` RGB arrays of one size. H and W divisible by 32.
        batch_size: images per forward pass.
        device: where to run; None = where the model is. The model is moved there.
        precision: ``fp32`` or ``bf16`` (:func:`inference_autocast`).

    Returns:
        float32 ``(N, H, W)`` maps in [0, 1].
    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ValueError(msg)
    device = torch.device(device) if device is not None else _model_device(model)
    autocast = inference_autocast(device, precision)  # a bad precision fails before any work
    n = len(images)
    if n == 0:
        return np.zeros((0, *_spatial_shape(images)), dtype=np.float32)
    model.to(device)
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    try:
        with torch.no_grad(), autocast:
            for start in range(0, n, batch_size):
                batch = _batch_to_tensor(images, start, min(start + batch_size, n), device)
                maps = model.anomaly_map(batch).float().cpu().numpy()  # type: ignore[operator]  # nn.Module attributes type as Tensor | Module
                if out is None:
                    out = np.empty((n, *maps.shape[1:]), dtype=np.float32)
                out[start : start + maps.shape[0]] = maps
    finally:
        model.train(was_training)
    assert out is not None
    return out


def evaluate_model(
    model: nn.Module,
    images: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray,
    labels: np.ndarray | Sequence[int],
    defect_types: Sequence[str] | None,
    eval_cfg: EvalConfig,
    device: torch.device | str | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Predict the maps of an evaluation set and compute its metrics.

    Args:
        model: the model to evaluate (see :func:`predict_maps`).
        images: the set's images (see :func:`predict_maps`), ``N`` of them.
        masks: ``(N, H, W)`` ground truth in {0, 1} (all zero for normal images).
        labels: ``(N,)`` 1 = anomalous.
        defect_types: ``N`` names for per-defect-type metrics, or None for overall metrics only.
        eval_cfg: ``eval`` section: ``top_k``, ``aupro_fpr_limit``, ``batch_size``.
        device: where to run; None = where the model is.

    Returns:
        ``(metrics, maps)``: metrics keyed as in :mod:`memseg.metrics.keys` (plus ``"<key>/<type>"``;
        undefined ones left out) and the float32 ``(N, H, W)`` maps.
    """
    maps = predict_maps(model, images, eval_cfg.batch_size, device)
    if maps.shape[0] == 0:
        return {}, maps
    metrics = compute_metrics(
        maps, masks, labels, defect_types, top_k=eval_cfg.top_k, fpr_limit=eval_cfg.aupro_fpr_limit
    )
    return metrics, maps


def load_split(cfg: MemSegConfig, split: Split) -> EvalSet:
    """The images of one split of ``cfg``'s category, at ``data.image_size``.

    ``test``: the category's ``test/`` folder (the figures to report, never to choose with).
    ``val``: the held-out ``train/good`` images, each clean and with ``data.val_anomalies_per_image``
    synthetic anomalies drawn with ``eval.val_seed``: exactly the set training selected on.

    Raises:
        MemSegError: naming the category folder when the split has no images.
    """
    if split == "test":
        files = list_category(cfg.data.root, cfg.data.category)
        data = load_test_set(files.test, cfg.data.image_size)
    elif split == "val":
        _, splits = category_splits(cfg)
        data = build_validation_set(splits.val, cfg)
    else:
        msg = f"split must be one of {', '.join(SPLITS)}, got {split!r}"
        raise ValueError(msg)
    if len(data) == 0:
        msg = f"{cfg.data.root}/{cfg.data.category}: the {split} split has no images"
        raise MemSegError(msg)
    return data


@dataclass(frozen=True)
class SplitEvaluation:
    """A model's figures on one split: the data, its metrics and its float32 ``(N, H, W)`` maps."""

    split: Split
    data: EvalSet
    metrics: dict[str, float]
    maps: np.ndarray


def evaluate_split(
    model: nn.Module,
    cfg: MemSegConfig,
    split: Split = "test",
    device: torch.device | str | None = None,
    *,
    per_defect_type: bool = True,
) -> SplitEvaluation:
    """Evaluate a loaded model on a split of its category (:func:`load_split`).

    Args:
        model: the model (e.g. from :func:`memseg.inference.load_checkpoint`), memory built.
        cfg: its config, possibly with ``data.root``/``data.category``/``eval.*`` changed.
        split: ``test`` or ``val``.
        device: where to run; None = where the model is.
        per_defect_type: also compute ``"<metric>/<defect type>"`` figures.
    """
    data = load_split(cfg, split)
    defect_types = data.defect_types if per_defect_type else None
    metrics, maps = evaluate_model(model, data.images, data.masks, data.labels, defect_types, cfg.eval, device)
    return SplitEvaluation(split, data, metrics, maps)
