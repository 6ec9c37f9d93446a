"""The MLflow server definitions (compose and Kubernetes) carry the flags the shared server needs,
and the test server (tests/helpers/mlflow_auth_server.py) runs with the same ones.

Flags: PostgreSQL backend store, artifact proxy, basic-auth with the admin password from a secret,
``--allowed-hosts``, a health check on ``/health``.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.helpers.mlflow_auth_server import AUTH_INI, server_command
from tests.helpers.postgres import PostgresServer
from tests.infra.manifests import MLFLOW, find, render

COMPOSE = MLFLOW / "compose.yaml"
REQUIRED_FLAGS = {"--backend-store-uri", "--artifacts-destination", "--serve-artifacts", "--app-name", "--allowed-hosts"}


def _flags(argv: list[str]) -> dict[str, str | None]:
    """``{--flag: value or None}`` of an mlflow command line (``--x v`` and ``--x=v`` forms)."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq:
                out[name] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[name] = argv[i + 1]
            else:
                out[name] = None
    return out


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _check_server_flags(flags: dict[str, str | None], where: str) -> None:
    assert set(flags) >= REQUIRED_FLAGS, f"{where}: missing {REQUIRED_FLAGS - set(flags)}"
    store = urlsplit(flags["--backend-store-uri"])
    assert store.scheme == "postgresql+psycopg2", where
    assert store.password is None, f"{where}: the store URI must not carry the password (PGPASSWORD does)"
    assert flags["--app-name"] == "basic-auth", where
    assert flags["--serve-artifacts"] is None, where
    assert flags["--allowed-hosts"], where
    assert flags["--host"] == "0.0.0.0", where  # reachable from other containers/pods


def test_compose_is_valid_yaml_with_the_two_services() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"postgres", "mlflow"}
    assert set(compose["volumes"]) == {"postgres-data", "mlflow-artifacts"}


def test_compose_mlflow_server_flags() -> None:
    mlflow = _compose()["services"]["mlflow"]
    assert mlflow["command"][0] == "server"
    _check_server_flags(_flags(mlflow["command"]), "compose.yaml")
    env = mlflow["environment"]
    # Secrets come from infra/mlflow/.env through required-variable interpolation, never literals.
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name].startswith("${") and ":?" in env[name], name
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert "./basic_auth.ini:/etc/mlflow/basic_auth.ini:ro" in mlflow["volumes"]
    artifacts = _flags(mlflow["command"])["--artifacts-destination"]
    assert any(v.endswith(":" + artifacts) for v in mlflow["volumes"]), "artifacts must live on a volume"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_health_checks() -> None:
    services = _compose()["services"]
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    # The database the auth app needs is created at first start.
    initdb = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert initdb
    sql = (MLFLOW / "initdb" / "10-mlflow-auth.sql").read_text()
    ini = configparser.ConfigParser()
    ini.read(MLFLOW / "basic_auth.ini")
    assert f"CREATE DATABASE {urlsplit(ini['mlflow']['database_uri']).path.lstrip('/')};" in sql


def test_kubernetes_server_has_the_same_flags_as_compose() -> None:
    args = find(render(MLFLOW), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    k8s, compose = _flags(args), _flags(_compose()["services"]["mlflow"]["command"])
    _check_server_flags(k8s, "infra/mlflow/k8s/mlflow.yaml")
    assert {k: v for k, v in k8s.items() if k != "--allowed-hosts"} == {
        k: v for k, v in compose.items() if k != "--allowed-hosts"
    }


def test_test_server_runs_like_the_deployed_one(tmp_path: Path) -> None:
    pg = PostgresServer("127.0.0.1", 5432, "memseg", "pw", tmp_path)
    argv = server_command(pg, 5000, tmp_path / "artifacts")
    flags = _flags(argv[argv.index("server") + 1 :])
    deployed = _flags(_compose()["services"]["mlflow"]["command"])
    assert set(flags) == set(deployed)
    assert flags["--app-name"] == deployed["--app-name"]
    assert urlsplit(flags["--backend-store-uri"]).password is None
    test_ini, deployed_ini = configparser.ConfigParser(), configparser.ConfigParser()
    test_ini.read_string(AUTH_INI.format(database_uri="postgresql+psycopg2://u@h/d", admin="admin"))
    deployed_ini.read(MLFLOW / "basic_auth.ini")
    assert set(test_ini["mlflow"]) == set(deployed_ini["mlflow"])
    assert test_ini["mlflow"]["default_permission"] == deployed_ini["mlflow"]["default_permission"]
