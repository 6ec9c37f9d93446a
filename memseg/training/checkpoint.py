"""The checkpoint directory: its layout, atomic writes, and ``weights_only`` loading.

Layout (docs/architecture.md, "Checkpoint directory")::

    model.pt        {"schema_version", "config": cfg.model_dump(), "state_dict", "step", "metrics"}
    best_model.pt   same layout, the best-on-validation weights so far
    train_state.pt  optimizer, scheduler, step, best metric, RNG states (resume)
    heatmaps/       validation overlays of this evaluation (PNG)

Every file holds only tensors and plain Python types, so ``torch.load(..., weights_only=True)``
reads it: a checkpoint from an untrusted place cannot run code. ``memseg.inference.load_checkpoint``
reads ``model.pt``/``best_model.pt`` through :func:`load_model_file`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memseg.config import SCHEMA_VERSION, MemSegConfig
from memseg.errors import CheckpointError

MODEL_FILE = "model.pt"
BEST_MODEL_FILE = "best_model.pt"
TRAIN_STATE_FILE = "train_state.pt"
HEATMAP_DIR = "heatmaps"
LATEST_DIR = "latest"
# Config fields that checkpoints written by earlier versions may hold and this version dropped; they
# never changed the trained weights, so such a checkpoint still loads without them.
RETIRED_CONFIG_FIELDS = (("train", "fail_at_step"),)


def plain_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics as plain floats (NumPy/tensor scalars would not load with ``weights_only``)."""
    return {str(k): float(v) for k, v in metrics.items()}


def model_payload(
    model: nn.Module, cfg: MemSegConfig, step: int, metrics: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``model.pt`` dictionary; tensors are moved to the CPU so any machine can load it."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "config": cfg.model_dump(),
        "state_dict": state,
        "step": int(step),
        "metrics": plain_metrics(metrics or {}),
    }


def save_model(
    path: str | Path, model: nn.Module, cfg: MemSegConfig, step: int, metrics: Mapping[str, Any] | None = None
) -> Path:
    """Write a ``model.pt``-layout file."""
    path = Path(path)
    torch.save(model_payload(model, cfg, step, metrics), path)
    return path


def _load(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        msg = f"{path}: {what} not found"
        raise CheckpointError(msg)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a usable checkpoint"
        msg = f"{path}: cannot read {what} ({type(exc).__name__}: {exc})"
        raise CheckpointError(msg) from exc
    if not isinstance(payload, dict):
        msg = f"{path}: {what} must hold a dict, got {type(payload).__name__}"
        raise CheckpointError(msg)
    return payload


def load_model_file(path: str | Path) -> dict[str, Any]:
    """Read a ``model.pt``/``best_model.pt`` with ``weights_only=True`` and check its schema.

    Raises:
        CheckpointError: the file is missing, unreadable, lacks a key, or has another schema version.
    """
    path = Path(path)
    payload = _load(path, "model checkpoint")
    missing = [k for k in ("schema_version", "config", "state_dict", "step", "metrics") if k not in payload]
    if missing:
        msg = f"{path}: model checkpoint lacks {missing}"
        raise CheckpointError(msg)
    if payload["schema_version"] != SCHEMA_VERSION:
        msg = f"{path}: checkpoint schema_version {payload['schema_version']}, this code reads {SCHEMA_VERSION}"
        raise CheckpointError(msg)
    return payload


def config_from_payload(payload: Mapping[str, Any], path: str | Path = "<checkpoint>") -> MemSegConfig:
    """The :class:`MemSegConfig` stored in a model payload (fields in ``RETIRED_CONFIG_FIELDS`` ignored).

    A config saved before ``data.texture_source`` existed gets the source it was trained with:
    ``dtd`` when it names a ``data.dtd_root``, else ``procedural`` (what a missing root meant then).
    One saved before ``model.map_smoothing_sigma`` existed gets 0: its maps stay as they were.
    """
    tree = payload["config"]
    if isinstance(tree, Mapping):
        tree = {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
        for section, name in RETIRED_CONFIG_FIELDS:
            if isinstance(tree.get(section), dict):
                tree[section].pop(name, None)
        data = tree.get("data")
        if isinstance(data, dict) and "texture_source" not in data:
            data["texture_source"] = "dtd" if data.get("dtd_root") else "procedural"
        model = tree.get("model")
        if isinstance(model, dict) and "map_smoothing_sigma" not in model:
            model["map_smoothing_sigma"] = 0.0  # the raw map it was selected and reported with
    try:
        return MemSegConfig.model_validate(tree)
    except Exception as exc:  # pydantic's error, re-raised naming the file
        msg = f"{path}: stored config is invalid ({exc})"
        raise CheckpointError(msg) from exc


def save_train_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``train_state.pt`` (optimizer, scheduler, step, best, history, RNG states)."""
    path = Path(path)
    torch.save(dict(state), path)
    return path


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` with ``weights_only=True``."""
    path = Path(path)
    state = _load(path, "training state")
    missing = [k for k in ("step", "optimizer", "scheduler") if k not in state]
    if missing:
        msg = f"{path}: training state lacks {missing}"
        raise CheckpointError(msg)
    return state


def check_checkpoint_dir(path: str | Path) -> Path:
    """A resumable checkpoint directory holds ``model.pt`` and ``train_state.pt``; name what is missing."""
    path = Path(path)
    if not path.is_dir():
        msg = f"{path}: checkpoint directory not found"
        raise CheckpointError(msg)
    missing = [name for name in (MODEL_FILE, TRAIN_STATE_FILE) if not (path / name).is_file()]
    if missing:
        msg = f"{path}: checkpoint directory lacks {', '.join(missing)}"
        raise CheckpointError(msg)
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (the best model is often unchanged between evaluations), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_checkpoint_dir(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Write a checkpoint directory atomically: ``fill(tmp)`` then swap ``tmp`` into ``target``.

    A crash while writing leaves the previous ``target`` intact (or a ``.old`` copy of it next to
    the target if the crash fell between the two renames; :func:`recover_checkpoint_dir` handles it).

    Args:
        target: the directory to (re)place, e.g. ``<output_dir>/checkpoints/latest``.
        fill: writes the files into the temporary directory it is given. It may read ``target``
            (the previous checkpoint), which still exists while it runs.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def recover_checkpoint_dir(target: str | Path) -> Path | None:
    """The usable checkpoint at ``target``: the directory itself, or its ``.old`` twin after a crash."""
    target = Path(target)
    if target.is_dir():
        return target
    old = target.parent / f".{target.name}.old"
    return old if old.is_dir() else None
