"""A real ``mlflow server`` subprocess for tests: SQLite backend, proxied artifacts, a free port.

The server runs with one worker, listens on 127.0.0.1 only, keeps its database and artifacts under a
temp folder, and is terminated (then killed, by its own process group) in teardown. Other helpers
can reuse :func:`start_mlflow_server` with another ``backend_store_uri`` (PostgreSQL) or extra
server arguments (``--app-name basic-auth``) and environment.

Usage (tests/conftest.py registers this module as a plugin, so a test asks by argument)::

    def test_x(mlflow_server):
        client = mlflow.MlflowClient(mlflow_server.uri)
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.ray_cluster import HOST, free_port


@dataclass
class MlflowServer:
    """Handle of a running server."""

    uri: str
    root: Path
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # uvicorn and job-runner children
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    """Poll ``/health`` until it answers 200.

    Raises:
        RuntimeError: the server exited or did not get healthy in time (with the tail of its log).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def restart_server(server: MlflowServer) -> MlflowServer:
    """Stop ``server`` and start the same command again: same port, database and artifact folder."""
    server.stop()
    log = server.root / "server-restarted.log"
    with log.open("w") as out:
        proc = subprocess.Popen(server.proc.args, stdout=out, stderr=subprocess.STDOUT, cwd=server.root,
                                start_new_session=True, env=os.environ.copy())
    restarted = MlflowServer(uri=server.uri, root=server.root, proc=proc, log=log)
    wait_healthy(restarted.uri, proc, log)
    return restarted


def start_mlflow_server(
    root: Path | None = None,
    *,
    backend_store_uri: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` (SQLite under ``root`` unless ``backend_store_uri`` is given)."""
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mlflow-test-"))
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://{HOST}:{port}"
    log = root / "server.log"
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", HOST, "--port", str(port), "--workers", "1",
        *extra_args,
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    server = MlflowServer(uri=uri, root=root, proc=proc, log=log)
    try:
        wait_healthy(uri, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """One SQLite-backed tracking server for the test session."""
    server = start_mlflow_server()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
