"""Exported ONNX files attached to the registered model version they came from.

A model version's own artifacts are fixed when it is logged, so the files go to the run that
produced the version, under ``export/version-<N>/``, and the version gets tags that say where they
are (``onnx_fp32``, ``onnx_int8``, ``openvino_*`` for OpenVINO IR) and what the INT8 gate measured
(``memseg.export.gate.GateResult.tags``). ``memseg export --register`` does this after exporting a
``models:/`` URI.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from memseg.errors import CheckpointError
from memseg.export.gate import GateResult
from pipelines.exported_files import EXPORT_TAGS, IR_TAGS
from pipelines.model_source import parse_registry_uri

EXPORT_ARTIFACT_DIR = "export"


def attach_export(
    uri: str, tracking_uri: str, files: list[Path], gate: GateResult | None
) -> dict[str, str]:
    """Log ``files`` to the version's run and tag the version; return the tags set.

    Raises:
        CheckpointError: naming the URI when the version is unknown or has no run to hold the files.
    """
    ref = parse_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if ref.alias:
            version = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            version = client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:
        msg = f"{uri}: not in the model registry at {tracking_uri} ({exc.message})"
        raise CheckpointError(msg) from None
    if not version.run_id:
        msg = f"{uri}: version {version.version} has no run to attach the exported files to"
        raise CheckpointError(msg)
    folder = f"{EXPORT_ARTIFACT_DIR}/version-{version.version}"
    for file in files:
        client.log_artifact(version.run_id, str(file), folder)
    tags = {}
    for file in files:  # model_<precision>.onnx / .xml; an IR's .bin is logged beside its .xml, untagged
        by_precision = {".onnx": EXPORT_TAGS, ".xml": IR_TAGS}.get(file.suffix, {})
        tag = by_precision.get(file.stem.removeprefix("model_"))
        if tag:
            tags[tag] = f"runs:/{version.run_id}/{folder}/{file.name}"
    if gate is not None:
        tags.update(gate.tags())
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, version.version, key, value)
    return tags
