"""Inference on new images: load a checkpoint, score images, write maps and overlays.

- :func:`load_checkpoint` reads a ``model.pt``/``best_model.pt`` (``torch.load(weights_only=True)``,
  so an untrusted file cannot run code) and rebuilds the model from the config stored in it.
- :func:`predict` scores images of any size: each is resized to ``data.image_size`` (as in training),
  its image score is the mean of the ``eval.top_k`` highest pixels AT THE MODEL'S RESOLUTION (so a
  threshold chosen on evaluation scores means the same here; see docs/model.md, "Evaluation and
  scoring"), and its map is resized back to the image's own size.
- :func:`predict_paths` does that for files and folders and writes ``<name>_map.png`` (16-bit
  grayscale, value / 65535 = score), ``<name>_overlay.png`` and ``scores.csv``. An unreadable image
  is reported by name and skipped; the others are still predicted.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from memseg.config import MemSegConfig, resolve_for_category
from memseg.data.mvtec import IMAGE_SUFFIXES, read_rgb, resize_square, to_rgb_u8
from memseg.errors import CheckpointError, ConfigError, ImageReadError, MemSegError
from memseg.evaluation import predict_maps
from memseg.metrics import image_scores
from memseg.model import MemSeg, create_model
from memseg.training.checkpoint import (
    BEST_MODEL_FILE,
    MODEL_FILE,
    config_from_payload,
    load_model_file,
)
from memseg.visualize import overlay_heatmap, panel

log = logging.getLogger(__name__)

SCORES_FILE = "scores.csv"
MAP_SUFFIX = "_map.png"
OVERLAY_SUFFIX = "_overlay.png"
PANEL_SUFFIX = "_panel.png"
MAP_PNG_MAX = 65535  # 16-bit PNG: the map is stored as round(score * 65535)
# Where a checkpoint directory may keep its model file, in order of preference: a checkpoint dir
# itself, then a training output dir (``<output_dir>/best_model.pt``, ``checkpoints/latest/``).
_CANDIDATES = (BEST_MODEL_FILE, MODEL_FILE, f"checkpoints/latest/{BEST_MODEL_FILE}", f"checkpoints/latest/{MODEL_FILE}")


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        score: image anomaly score (top-k mean at the model's resolution), in [0, 1].
        anomaly_map: float32 ``(H, W)`` in [0, 1], at the input image's own size (or at the model's
            resolution, see :func:`predict`'s ``full_size``).
    """

    score: float
    anomaly_map: np.ndarray


@dataclass
class PredictReport:
    """What :func:`predict_paths` did.

    Attributes:
        scores: ``(path, score)`` per predicted image, in input order.
        skipped: ``(path, reason)`` per image that could not be read.
        out_dir: where the files went.
        threshold: the threshold used for ``is_anomalous`` (None = not decided).
    """

    scores: list[tuple[Path, float]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    out_dir: Path = Path()
    threshold: float | None = None

    @property
    def scores_csv(self) -> Path:
        return self.out_dir / SCORES_FILE


def resolve_checkpoint_file(path: str | Path) -> Path:
    """The model file for ``path``: the file itself, or for a folder its ``best_model.pt``, else ``model.pt``.

    A training output folder works too (``<dir>/best_model.pt`` or ``<dir>/checkpoints/latest/``).

    Raises:
        CheckpointError: naming the path when nothing is found.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in _CANDIDATES:
            if (path / name).is_file():
                return path / name
        msg = f"{path}: no {BEST_MODEL_FILE} or {MODEL_FILE} in this folder (nor in checkpoints/latest/)"
        raise CheckpointError(msg)
    if not path.is_file():
        msg = f"{path}: checkpoint file not found"
        raise CheckpointError(msg)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MemSeg, MemSegConfig]:
    """Rebuild a trained MemSeg from a checkpoint file or folder.

    The architecture comes from the stored config; the backbone's pretrained weights are NOT
    downloaded or read (the state dict holds every weight, and the memory bank).

    Args:
        path: ``model.pt``/``best_model.pt``, or a folder holding them (``best_model.pt`` preferred).
        device: where to put the model.

    Returns:
        ``(model in eval mode on device, its config)``.

    Raises:
        CheckpointError: naming the file when it is missing, corrupt, of another schema version,
            or its weights do not fit the architecture of its config.
    """
    file = resolve_checkpoint_file(path)
    payload = load_model_file(file)
    cfg = config_from_payload(payload, file)
    try:
        cfg = resolve_for_category(cfg)
        model = create_model(cfg, load_backbone_weights=False)
    except ConfigError as exc:
        msg = f"{file}: stored config cannot build a model ({exc})"
        raise CheckpointError(msg) from exc
    state = payload["state_dict"]
    if not isinstance(state, dict):
        msg = f"{file}: state_dict must be a dict of tensors, got {type(state).__name__}"
        raise CheckpointError(msg)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        msg = f"{file}: weights do not fit the model of its config ({exc})"
        raise CheckpointError(msg) from exc
    model.to(device).eval()
    # DEBUG: registration, the gate and the test measurement load checkpoints many times per run.
    log.debug("loaded %s (category %s, step %s)", file, cfg.data.category, payload.get("step"))
    return model, cfg


def predict(
    model: MemSeg | nn.Module,
    images_u8: Sequence[np.ndarray],
    cfg: MemSegConfig,
    device: str | torch.device | None = None,
    *,
    precision: str = "fp32",
    full_size: bool = True,
) -> list[Prediction]:
    """Score images of any size.

    Args:
        model: a loaded MemSeg (:func:`load_checkpoint`), or anything with its ``anomaly_map``
            (:class:`memseg.export.torch_adapter.OnnxBackedModel` runs an exported graph).
        images_u8: uint8 RGB ``(H, W, 3)`` (or grayscale ``(H, W)``) images; sizes may differ.
        cfg: the model's config (``data.image_size``, ``eval.top_k``, ``eval.batch_size``).
        device: where to run; None = where the model is.
        precision: ``fp32`` (default; what evaluation uses) or ``bf16``
            (:func:`memseg.evaluation.inference_autocast`).
        full_size: True (default): each map is resized to its image's own size; False: maps stay
            at the model's resolution, ``data.image_size`` square (what a server returns by
            default, so a large image does not make a large answer).

    Returns:
        One :class:`Prediction` per image.
    """
    rgb = [to_rgb_u8(im) for im in images_u8]
    if not rgb:
        return []
    size = cfg.data.image_size
    batch = np.stack([resize_square(im, size) for im in rgb])
    maps = predict_maps(model, batch, cfg.eval.batch_size, device, precision=precision)
    scores = image_scores(maps, cfg.eval.top_k)
    out = []
    for image, anomaly_map, score in zip(rgb, maps, scores, strict=True):
        h, w = image.shape[:2]
        if full_size and (h, w) != anomaly_map.shape:
            anomaly_map = cv2.resize(anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(Prediction(float(score), np.clip(anomaly_map, 0.0, 1.0).astype(np.float32, copy=False)))
    return out


def collect_images(inputs: Iterable[str | Path], exclude: Path | None = None) -> list[tuple[Path, str]]:
    """Image files named directly or found (recursively) in folders, each with a unique output name.

    Args:
        inputs: files and folders.
        exclude: a folder whose files are never taken (the output folder, so reruns do not predict
            their own outputs).

    Returns:
        ``(path, name)`` pairs in input order; ``name`` is the file stem, or for files found in a
        folder their relative path joined with ``__`` (``good__000``), made unique with ``-N``.

    Raises:
        ImageReadError: an input that does not exist, or no image found at all.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    used: set[str] = set()

    def add(path: Path, name: str) -> None:
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name}-{n}"
        used.add(unique)
        found.append((path, unique))

    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            files = sorted(
                p for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
                and (exclude is None or not p.resolve().is_relative_to(exclude))
            )
            for p in files:
                add(p, "__".join(p.relative_to(item).with_suffix("").parts))
        elif item.is_file():
            add(item, item.stem)
        else:
            msg = f"{item}: no such file or folder"
            raise ImageReadError(msg)
    if not found:
        msg = f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(str(i) for i in inputs)}"
        raise ImageReadError(msg)
    return found


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        msg = f"{path}: cannot write image"
        raise MemSegError(msg)


def predict_paths(
    model: MemSeg | nn.Module,
    cfg: MemSegConfig,
    paths_or_dir: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    panels: bool = False,
) -> PredictReport:
    """Predict image files and folders, writing maps, overlays and ``scores.csv`` to ``out_dir``.

    Images are read and predicted ``eval.batch_size`` at a time, so memory does not grow with the
    number of files.

    Args:
        model: a loaded MemSeg.
        cfg: its config.
        paths_or_dir: a file or folder, or several (folders are searched recursively).
        out_dir: created if needed.
        threshold: when given, ``scores.csv`` gets ``is_anomalous`` = (score >= threshold).
        device: where to run; None = where the model is.
        precision: ``fp32`` or ``bf16``, as in :func:`predict`.
        panels: also write ``<name>_panel.png``: labelled image | anomaly map | overlay tiles with a
            colour bar, stretched to the map's own range (:func:`memseg.visualize.panel`); a few
            hundred KB each, so off by default.

    Returns:
        A :class:`PredictReport`; unreadable images are in ``skipped`` (logged at DEBUG only, so a
        caller that reports them does not print each twice), not raised.

    Raises:
        ImageReadError: an input path that does not exist, or no image file at all.
    """
    inputs = [paths_or_dir] if isinstance(paths_or_dir, (str, Path)) else list(paths_or_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = collect_images(inputs, exclude=out)
    report = PredictReport(out_dir=out, threshold=threshold)
    rows: list[list[str]] = []
    chunk = cfg.eval.batch_size
    for start in range(0, len(files), chunk):
        readable: list[tuple[Path, str, np.ndarray]] = []
        for path, name in files[start : start + chunk]:
            try:
                readable.append((path, name, read_rgb(path)))
            except ImageReadError as exc:
                log.debug("skipped: %s", exc)  # the caller reports report.skipped, once
                report.skipped.append((path, str(exc)))
        if not readable:
            continue
        predictions = predict(model, [image for _, _, image in readable], cfg, device, precision=precision)
        for (path, name, image), pred in zip(readable, predictions, strict=True):
            levels = np.round(pred.anomaly_map * MAP_PNG_MAX).astype(np.uint16)
            _write_png(out / f"{name}{MAP_SUFFIX}", levels)
            overlay = overlay_heatmap(image, pred.anomaly_map)
            _write_png(out / f"{name}{OVERLAY_SUFFIX}", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            if panels:
                tiles = panel(image, None, pred.anomaly_map)
                _write_png(out / f"{name}{PANEL_SUFFIX}", cv2.cvtColor(tiles, cv2.COLOR_RGB2BGR))
            report.scores.append((path, pred.score))
            row = [str(path), name, f"{pred.score:.8g}"]
            if threshold is not None:
                row.append(str(int(pred.score >= threshold)))
            rows.append(row)
    header = ["path", "name", "score"] + (["is_anomalous"] if threshold is not None else [])
    with report.scores_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return report
