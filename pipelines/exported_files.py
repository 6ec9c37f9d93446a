"""The exported ONNX files of a registered model version, found from the pyfunc that version holds.

``memseg export --register`` logs the files to the run that produced the version and tags the
version with their ``runs:/`` URIs (:data:`EXPORT_TAGS`; :mod:`pipelines.export_registry`). A loaded
pyfunc does not know which version it came from, only its own folder, whose ``MLmodel`` names the
LoggedModel (``model_id``) and run; the versions registered from that LoggedModel are looked up in
the registry (``mlflow.get_registry_uri()``, the one ``mlflow.pyfunc.load_model("models:/...")``
used), and the newest one carrying the wanted tag gives the file.

Imports neither torch nor :mod:`pipelines.model_source` (which imports the pyfunc module), so the
pyfunc's ONNX and OpenVINO backends can use it without torch.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from memseg.errors import CheckpointError

# Version tags: the precision's file (``onnx_fp32``, ``onnx_int8``), its OpenVINO IR (``openvino_*``,
# the ``.xml``; its ``.bin`` lies beside it) and the INT8 gate's verdict.
EXPORT_TAGS = {"fp32": "onnx_fp32", "int8": "onnx_int8"}
IR_TAGS = {"fp32": "openvino_fp32", "int8": "openvino_int8"}
GATE_TAG = "int8_gate"
MLMODEL_FILE = "MLmodel"


def model_folder(artifact: str | Path) -> Path:
    """The pyfunc folder (the one holding ``MLmodel``) that contains ``artifact``.

    Raises:
        CheckpointError: naming the artifact when no folder above it holds an ``MLmodel`` file.
    """
    path = Path(artifact).resolve()
    for folder in path.parents:
        if (folder / MLMODEL_FILE).is_file():
            return folder
    msg = f"{artifact}: not inside an MLflow model folder (no {MLMODEL_FILE} above it)"
    raise CheckpointError(msg)


def _uri(version: ModelVersion) -> str:
    return f"models:/{version.name}/{version.version}"


def registered_versions(folder: Path, registry_uri: str) -> list[ModelVersion]:
    """The versions registered from the pyfunc in ``folder``, newest first.

    Raises:
        CheckpointError: the folder's model is not a registered version in ``registry_uri``.
    """
    meta = Model.load(str(folder / MLMODEL_FILE))
    model_id, run_id = getattr(meta, "model_id", None), meta.run_id
    client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    if not run_id and model_id:
        try:
            run_id = client.get_logged_model(model_id).source_run_id
        except MlflowException as exc:
            msg = f"{folder}: its logged model {model_id} is not in {registry_uri} ({exc.message})"
            raise CheckpointError(msg) from None
    found: list[ModelVersion] = []
    if run_id:
        try:
            found = client.search_model_versions(f"run_id = '{run_id}'")
        except MlflowException as exc:
            msg = f"{folder}: cannot search the model registry at {registry_uri} ({exc.message})"
            raise CheckpointError(msg) from None
    if model_id:
        found = [v for v in found if v.model_id in (None, model_id)]
    if not found:
        msg = (
            f"{folder}: this model (logged model {model_id}, run {run_id}) is not a registered model version in "
            f"{registry_uri}; exported files are attached to a version: register it, then run "
            "`memseg export --checkpoint models:/<name>/<version> --out DIR --register`"
        )
        raise CheckpointError(msg)
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def exported_file_uri(versions: list[ModelVersion], precision: str) -> tuple[ModelVersion, str]:
    """The newest version carrying ``precision``'s file tag, and that tag (a ``runs:/`` URI).

    Raises:
        CheckpointError: naming the version and the ``memseg export`` command that attaches the file,
            or, for INT8 refused by the gate, the gate's verdict.
    """
    if precision not in EXPORT_TAGS:
        msg = f"precision must be one of {', '.join(EXPORT_TAGS)} for an exported model, got {precision!r}"
        raise CheckpointError(msg)
    tag = EXPORT_TAGS[precision]
    for version in versions:
        if tag in version.tags:
            return version, version.tags[tag]
    newest = versions[0]
    uri = _uri(newest)
    if precision == "int8" and newest.tags.get(GATE_TAG) == "refused":
        msg = (
            f"{uri} has no INT8 file: its INT8 export was refused by the accuracy gate (tag {GATE_TAG}=refused, "
            f"margin {newest.tags.get('int8_gate_margin', '?')}); use precision fp32"
        )
        raise CheckpointError(msg)
    flags = " --int8" if precision == "int8" else ""
    msg = (
        f"{uri} has no exported {precision} ONNX file (no version tag {tag}): run "
        f"`memseg export --checkpoint {uri} --out DIR{flags} --register` first"
    )
    raise CheckpointError(msg)


def download_exported_file(
    artifact: str | Path, precision: str, dest: Path, *, prefer_ir: bool = False
) -> tuple[str, Path]:
    """Download the ``precision`` file of the version the pyfunc holding ``artifact`` came from.

    Args:
        prefer_ir: take the OpenVINO IR (``.xml`` and its ``.bin``) when the version has one, else the ONNX file.

    Returns:
        ``(models:/<name>/<version>, the downloaded .onnx or .xml)``.
    """
    registry_uri = mlflow.get_registry_uri()
    versions = registered_versions(model_folder(artifact), registry_uri)
    ir = next((v for v in versions if IR_TAGS.get(precision) in v.tags), None) if prefer_ir else None
    if ir is not None:
        version, uris = ir, [ir.tags[IR_TAGS[precision]]]
        uris.append(uris[0].removesuffix(".xml") + ".bin")
    else:
        version, uri = exported_file_uri(versions, precision)
        uris = [uri]
    try:
        local = [mlflow.artifacts.download_artifacts(artifact_uri=u, dst_path=str(dest), tracking_uri=registry_uri)
                 for u in uris]
    except MlflowException as exc:
        msg = f"{_uri(version)}: cannot download its {precision} export {', '.join(uris)} ({exc.message})"
        raise CheckpointError(msg) from None
    return _uri(version), Path(local[0])
