"""The shared MLflow server as infra/mlflow deploys it: PostgreSQL backend, basic-auth, artifact proxy.

An unauthenticated client is refused, the sweep's credentials (a user with EDIT) can track runs and
register model versions, and a user with read permission only cannot move the ``champion`` alias.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers.mlflow_auth_server import ADMIN_USER, MlflowAuthServer
from tests.helpers.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.mlflow]

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def _get(uri: str, user: str | None = None, password: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(uri)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _client():
    from mlflow import MlflowClient

    # The credentials come from the environment; the URI is passed explicitly, because a tracking URI
    # that an earlier test set with mlflow.set_tracking_uri would otherwise win over the environment's.
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def _log_model_run(client, experiment_id: str, tmp_path: Path) -> tuple[str, str]:
    """A finished run with a param, a metric and a ``model/`` artifact; returns (run_id, model source)."""
    run = client.create_run(experiment_id, run_name="trial-0")
    client.log_param(run.info.run_id, "optim.lr", 0.04)
    client.log_metric(run.info.run_id, "val_pixel_auroc", 0.93, step=100)
    model_dir = tmp_path / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "weights.txt").write_text("not really weights")
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id, f"{run.info.artifact_uri}/model"


def test_unauthenticated_and_wrong_password_are_refused(mlflow_auth_server: MlflowAuthServer) -> None:
    uri = mlflow_auth_server.tracking_uri + SEARCH
    assert _get(uri)[0] == 401
    assert _get(uri, ADMIN_USER, "not-the-password")[0] == 401
    status, body = _get(uri, ADMIN_USER, mlflow_auth_server.users[ADMIN_USER])
    assert status == 200
    assert "experiments" in body


def test_unauthenticated_mlflow_client_is_refused(
    mlflow_auth_server: MlflowAuthServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.exceptions import MlflowException

    mlflow_auth_server.as_user(monkeypatch, None)
    with pytest.raises(MlflowException) as info:
        _client().create_experiment(_name("anonymous"))
    assert "401" in str(info.value) or info.value.error_code == "UNAUTHENTICATED"


def test_sweeps_user_with_edit_tracks_runs_and_registers_versions(
    mlflow_auth_server: MlflowAuthServer,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    srv = mlflow_auth_server
    experiment, model = _name("memseg-sweeps"), _name("memseg-mvtec-bottle")
    srv.as_user(monkeypatch, ADMIN_USER)
    experiment_id = _client().create_experiment(experiment)
    _client().create_registered_model(model)
    srv.create_user("sweeps", "sweeps-test-pw-123")
    srv.grant("sweeps", "experiment", experiment_id, "EDIT")
    srv.grant("sweeps", "registered_model", model, "EDIT")

    srv.as_user(monkeypatch, "sweeps")
    client = _client()
    run_id, source = _log_model_run(client, experiment_id, tmp_path)
    version = client.create_model_version(model, source, run_id=run_id)
    client.set_registered_model_alias(model, "challenger", version.version)

    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics["val_pixel_auroc"] == pytest.approx(0.93)
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/weights.txt"]
    assert client.get_model_version_by_alias(model, "challenger").run_id == run_id
    # The runs really live in PostgreSQL (not in a sqlite file next to the server).
    with postgres_server.connect("mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone() == ("FINISHED",)
    with postgres_server.connect("mlflow_auth") as conn, conn.cursor() as cur:
        cur.execute("SELECT username FROM users ORDER BY username")
        assert {"admin", "sweeps"} <= {row[0] for row in cur.fetchall()}


def test_read_only_user_cannot_move_champion(
    mlflow_auth_server: MlflowAuthServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from mlflow.exceptions import MlflowException

    srv = mlflow_auth_server
    experiment, model = _name("memseg-promote"), _name("memseg-mvtec-screw")
    srv.as_user(monkeypatch, ADMIN_USER)
    client = _client()
    experiment_id = client.create_experiment(experiment)
    client.create_registered_model(model)
    versions = []
    for i in range(2):
        run_id, source = _log_model_run(client, experiment_id, tmp_path / str(i))
        versions.append(client.create_model_version(model, source, run_id=run_id).version)
    client.set_registered_model_alias(model, "champion", versions[0])

    srv.create_user("viewer", "viewer-test-pw-123")  # default_permission = READ, nothing granted
    srv.as_user(monkeypatch, "viewer")
    viewer = _client()
    assert viewer.get_model_version_by_alias(model, "champion").version == versions[0]  # can read
    with pytest.raises(MlflowException) as info:
        viewer.set_registered_model_alias(model, "champion", versions[1])
    assert info.value.error_code == "PERMISSION_DENIED"
    assert "403" in str(info.value) or "Permission denied" in str(info.value)

    srv.as_user(monkeypatch, ADMIN_USER)
    assert _client().get_model_version_by_alias(model, "champion").version == versions[0]
