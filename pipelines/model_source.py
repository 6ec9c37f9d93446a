"""A registered model version as a checkpoint file: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

``memseg predict`` and ``memseg evaluate`` take these URIs where they take a checkpoint path. The
registered model is the pyfunc of :mod:`pipelines.pyfunc_model`, which carries the trained
``best_model.pt`` as its ``checkpoint`` artifact; that file is downloaded into a temporary folder
(removed when the command is done) and loaded like any checkpoint, so batch scoring and serving run
the same weights.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from memseg.errors import CheckpointError
from pipelines.pyfunc_model import CHECKPOINT_ARTIFACT
from pipelines.tracking import check_tracking_store

REGISTRY_PREFIX = "models:/"
_ALIAS = re.compile(r"^(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION = re.compile(r"^(?P<name>[^/@]+)/(?P<version>[0-9]+)$")
USAGE = "expected models:/<name>@<alias> or models:/<name>/<version>"


def is_registry_uri(checkpoint: str) -> bool:
    """True when ``checkpoint`` names a registered model version rather than a file or folder."""
    return checkpoint.startswith(REGISTRY_PREFIX)


@dataclass(frozen=True)
class RegisteredVersion:
    """Which version a URI names: by ``alias`` or by ``version`` (exactly one is set)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        which = f"@{self.alias}" if self.alias else f"/{self.version}"
        return f"{REGISTRY_PREFIX}{self.name}{which}"


def parse_registry_uri(uri: str) -> RegisteredVersion:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> :class:`RegisteredVersion`.

    Raises:
        CheckpointError: naming the URI and the two accepted forms.
    """
    body = uri[len(REGISTRY_PREFIX) :] if is_registry_uri(uri) else ""
    if match := _ALIAS.match(body):
        return RegisteredVersion(match["name"], alias=match["alias"])
    if match := _VERSION.match(body):
        return RegisteredVersion(match["name"], version=match["version"])
    msg = f"{uri}: {USAGE}"
    raise CheckpointError(msg)


def _lookup(client: mlflow.MlflowClient, ref: RegisteredVersion, tracking_uri: str) -> ModelVersion:
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:
        msg = f"{ref.uri}: not in the model registry at {tracking_uri} ({exc.message})"
        raise CheckpointError(msg) from None


def checkpoint_in_model(model_dir: Path, label: str) -> Path:
    """The ``checkpoint`` artifact of a downloaded pyfunc model folder.

    Raises:
        CheckpointError: naming ``label`` when the model is not a memseg pyfunc or lacks the file.
    """
    try:
        flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    except (OSError, MlflowException) as exc:
        msg = f"{label}: no readable MLmodel in the downloaded model ({exc})"
        raise CheckpointError(msg) from None
    artifact = (flavor.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT) or {}
    if not artifact.get("path"):
        msg = f"{label}: not a memseg model (its pyfunc has no {CHECKPOINT_ARTIFACT!r} artifact)"
        raise CheckpointError(msg)
    path = model_dir / artifact["path"]
    if not path.is_file():
        msg = f"{label}: the model's {CHECKPOINT_ARTIFACT!r} artifact {artifact['path']} was not downloaded"
        raise CheckpointError(msg)
    return path


@contextmanager
def registered_checkpoint(uri: str, tracking_uri: str) -> Iterator[tuple[Path, str]]:
    """Download the model version ``uri`` names; yield its checkpoint file and a label for messages.

    The label names the version an alias resolved to (``models:/memseg-x-tile@champion (version 3)``).
    The download is deleted on exit, so load the checkpoint inside the ``with`` block.

    Raises:
        CheckpointError: a malformed URI, an unknown model/alias/version, or a model without checkpoint.
        TrackingError: the tracking server does not answer.
    """
    ref = parse_registry_uri(uri)
    check_tracking_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = _lookup(client, ref, tracking_uri)
    label = f"{ref.uri} (version {version.version})" if ref.alias else ref.uri
    with tempfile.TemporaryDirectory(prefix="memseg-model-") as tmp:
        try:
            # The version's storage location, not its models:/ URI: resolving that one goes through
            # the process-wide tracking URI, which the --tracking-uri flag must not have to change.
            source = client.get_model_version_download_uri(ref.name, version.version)
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        except (MlflowException, OSError) as exc:
            msg = f"{label}: cannot download the model from {tracking_uri} ({exc})"
            raise CheckpointError(msg) from None
        yield checkpoint_in_model(Path(local), label), label
