"""Register a checkpoint as a pyfunc model version with the ``champion`` alias, on a test's mlflow server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from pipelines import pyfunc_model as pm


@contextmanager
def registered_champion(uri: str, checkpoint: Path, name: str, experiment: str) -> Iterator[str]:
    """Log ``checkpoint`` as the pyfunc under a new ``experiment``, register it as ``name``, alias it
    ``champion``; yields the version. The tracking URI is set while inside and restored after."""
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    try:
        # an explicit experiment rather than mlflow.set_experiment, whose choice would outlive the caller
        with mlflow.start_run(experiment_id=client.create_experiment(experiment)):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=pm.__file__, artifacts={pm.CHECKPOINT_ARTIFACT: str(checkpoint)},
                signature=pm.signature(), pip_requirements=["memseg"], registered_model_name=name,
                model_config=pm.DEFAULT_MODEL_CONFIG,
            )
        version = str(info.registered_model_version)
        client.set_registered_model_alias(name, "champion", version)
        yield version
    finally:
        mlflow.set_tracking_uri(saved_uri)  # None unsets $MLFLOW_TRACKING_URI again
