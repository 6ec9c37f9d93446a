"""``mlflow server --app-name basic-auth`` on PostgreSQL, as ``infra/mlflow`` deploys it, for the tests.

Infra concept: the team's shared tracking server (``infra/mlflow/compose.yaml`` and
``infra/mlflow/k8s``). Same flags and conventions: backend store and auth database on PostgreSQL
with password-less URIs and ``PGPASSWORD`` from the environment, ``--serve-artifacts`` with an
``--artifacts-destination``, ``--allowed-hosts``, the admin password from
``MLFLOW_AUTH_ADMIN_PASSWORD`` and a ``basic_auth.ini`` found through ``MLFLOW_AUTH_CONFIG_PATH``.

A test asks for the ``mlflow_auth_server`` fixture by argument (tests/conftest.py registers this
module as a plugin; the fixture uses ``postgres_server``). Clients pick their identity with :meth:`MlflowAuthServer.client_env`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.postgres import PostgresServer, free_port

ADMIN_USER = "admin"
ADMIN_PASSWORD = "memseg-admin-test-pw"
START_TIMEOUT_S = 120.0

# The same keys as infra/mlflow/basic_auth.ini; only the database address differs.
AUTH_INI = """\
[mlflow]
default_permission = READ
database_uri = {database_uri}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@dataclass
class MlflowAuthServer:
    """A running basic-auth tracking server; ``users`` maps every created user to its password."""

    tracking_uri: str
    process: subprocess.Popen
    log_path: Path
    users: dict[str, str] = field(default_factory=lambda: {ADMIN_USER: ADMIN_PASSWORD})

    def client_env(self, username: str | None) -> dict[str, str]:
        """Environment variables a client process uses to act as ``username`` (None: anonymous)."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if username is not None:
            env["MLFLOW_TRACKING_USERNAME"] = username
            env["MLFLOW_TRACKING_PASSWORD"] = self.users[username]
        return env

    def as_user(self, monkeypatch: pytest.MonkeyPatch, username: str | None) -> None:
        """Point this process's MLflow client at the server as ``username`` (None: no credentials)."""
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(key, raising=False)
        for key, value in self.client_env(username).items():
            monkeypatch.setenv(key, value)

    def create_user(self, username: str, password: str) -> None:
        """Create a user through the admin API (idempotent within a session)."""
        if username in self.users:
            return
        from mlflow.server import get_app_client

        with _env({**self.client_env(ADMIN_USER)}):
            get_app_client("basic-auth", tracking_uri=self.tracking_uri).create_user(username, password)
        self.users[username] = password

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """Grant ``permission`` (READ/EDIT/MANAGE) on an ``experiment`` id or ``registered_model`` name."""
        from mlflow.server import get_app_client

        with _env({**self.client_env(ADMIN_USER)}):
            get_app_client("basic-auth", tracking_uri=self.tracking_uri).grant_user_permission(
                username, resource_type, resource_id, permission
            )

    def permission(self, username: str, resource_type: str, resource_id: str) -> str:
        """The effective permission name (READ/EDIT/MANAGE/...) of ``username`` on a resource."""
        from mlflow.server import get_app_client

        with _env({**self.client_env(ADMIN_USER)}):
            client = get_app_client("basic-auth", tracking_uri=self.tracking_uri)
            return client.get_user_permission(username, resource_type, resource_id).permission


class _env:
    """Temporarily set environment variables (the MLflow REST client reads credentials from there)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, old in self.saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def server_command(pg: PostgresServer, port: int, artifacts: Path) -> list[str]:
    """The ``mlflow server`` command line, flag for flag the one in infra/mlflow/compose.yaml."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", pg.sqlalchemy_uri("mlflow", with_password=False),
        "--artifacts-destination", artifacts.as_uri(),
        "--serve-artifacts",
        "--app-name", "basic-auth",
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]  # fmt: skip


def start_server(pg: PostgresServer, base_dir: Path) -> MlflowAuthServer:
    """Start the server and wait until ``/health`` answers 200.

    Raises:
        RuntimeError: with the end of the server log when it exits or does not become healthy.
    """
    ini = base_dir / "basic_auth.ini"
    ini.write_text(
        AUTH_INI.format(database_uri=pg.sqlalchemy_uri("mlflow_auth", with_password=False), admin=ADMIN_USER)
    )
    artifacts = base_dir / "artifacts"
    artifacts.mkdir()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "memseg-test-secret-key",
        # libpq reads the password from here, so neither URI above carries it (as in the manifests).
        "PGPASSWORD": pg.password,
    }
    log_path = base_dir / "mlflow-server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        server_command(pg, port, artifacts),
        env=env,
        cwd=base_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # uvicorn workers are children: stop the whole group
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"mlflow server not healthy in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)
    return MlflowAuthServer(uri, proc, log_path)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)  # uvicorn waits for open keep-alive connections; no need here
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def mlflow_auth_server(postgres_server: PostgresServer) -> Iterator[MlflowAuthServer]:
    """The PostgreSQL-backed basic-auth MLflow server for the session."""
    import flask_wtf  # noqa: F401  (mlflow[auth], dev extra: fail, never skip)
    base = Path(tempfile.mkdtemp(prefix="memseg-mlflow-auth-"))
    server = start_server(postgres_server, base)
    try:
        yield server
    finally:
        stop_server(server.process)
        shutil.rmtree(base, ignore_errors=True)
