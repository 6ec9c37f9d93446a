"""The metadata an exported file carries: the training config, the precision, the gate's figures.

Reading and writing it needs the ``onnx`` package only (no torch, no runtime session).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from memseg.config import MemSegConfig
from memseg.errors import CheckpointError
from memseg.export.runtime import CONFIG_KEY


def set_metadata(path: str | Path, values: dict[str, str]) -> None:
    """Add or replace metadata entries of an ONNX file in place (the config entry is kept)."""
    proto = onnx.load_model(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(values)
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(path))


def stored_config(path: str | Path) -> MemSegConfig:
    """The config stored in an exported file (without opening a runtime session)."""
    props = {p.key: p.value for p in onnx.load_model(str(path), load_external_data=False).metadata_props}
    if CONFIG_KEY not in props:
        msg = f"{path}: not a memseg export (no {CONFIG_KEY!r} metadata)"
        raise CheckpointError(msg)
    return MemSegConfig.model_validate(json.loads(props[CONFIG_KEY]))
