"""A real PostgreSQL server on loopback for the tests (the backend store of the shared MLflow server).

Infra concept: ``infra/mlflow`` runs ``mlflow server`` against PostgreSQL; the tests do the same with
Debian's ``postgresql`` binaries (``initdb`` + ``postgres``), started once per session in a temporary
data directory, with password (SCRAM) authentication on TCP so that the ``PGPASSWORD`` convention of
the manifests (a password-less ``postgresql+psycopg2://user@host/db`` URI plus ``PGPASSWORD`` from a
Secret) is exercised too.

A test asks for the ``postgres_server`` fixture by argument (tests/conftest.py registers this module
as a plugin).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "memseg"
DATABASES = ("mlflow", "mlflow_auth")
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PostgresServer:
    """A running server: connect as ``user``/``password`` on ``host:port``."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def sqlalchemy_uri(self, database: str, *, with_password: bool = True) -> str:
        """``postgresql+psycopg2://`` URI of ``database``; without the password, libpq reads PGPASSWORD."""
        auth = f"{self.user}:{self.password}" if with_password else self.user
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database
        )

    def create_database(self, name: str) -> None:
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


def find_pg_bindir(*, install: bool = True) -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb; installs Debian's package if allowed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, capture_output=True)
        return find_pg_bindir(install=False)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; drop to the `postgres` account Debian's package creates.
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user="postgres", group="postgres")


def start_postgres(base_dir: Path, password: str = "memseg-test-pw") -> tuple[PostgresServer, subprocess.Popen]:
    """initdb into ``base_dir`` and start ``postgres`` on a free loopback port.

    Raises:
        RuntimeError: with the server log when it does not accept connections in time.
    """
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin) and cannot be installed here")
    data_dir = base_dir / "data"
    sock_dir = base_dir / "sock"
    for d in (base_dir, sock_dir):
        d.mkdir(parents=True, exist_ok=True)
        _chown_to_postgres(d)
    pwfile = base_dir / "pw"
    pwfile.write_text(password + "\n")
    _chown_to_postgres(pwfile)
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "initdb"),
                "-D", str(data_dir),
                "-U", SUPERUSER,
                "--pwfile", str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E", "UTF8",
                "--no-instructions",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    log_path = base_dir / "postgres.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        _as_postgres_user(
            [
                str(bindir / "postgres"),
                "-D", str(data_dir),
                "-p", str(port),
                "-k", str(sock_dir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",  # test data only; faster on a shared CI disk
            ]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PostgresServer("127.0.0.1", port, SUPERUSER, password, data_dir)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            server.connect().close()
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                stop_postgres(proc)
                msg = f"postgres did not accept connections:\n{log_path.read_text()[-4000:]}"
                raise RuntimeError(msg) from exc
            time.sleep(0.2)
    return server, proc


def stop_postgres(proc: subprocess.Popen) -> None:
    # SIGTERM = "smart" shutdown would wait for clients; SIGINT = "fast" shutdown.
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session, with the databases ``mlflow`` and ``mlflow_auth``."""
    import psycopg2  # noqa: F401  (dev extra: the MLflow server needs the driver; fail, never skip)
    base = Path(tempfile.mkdtemp(prefix="memseg-pg-"))  # /tmp: reachable by the postgres account
    os.chmod(base, 0o755)
    server, proc = start_postgres(base)
    try:
        for name in DATABASES:
            server.create_database(name)
        yield server
    finally:
        stop_postgres(proc)
        shutil.rmtree(base, ignore_errors=True)
