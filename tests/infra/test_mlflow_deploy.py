"""The MLflow server definitions (compose and Kubernetes) carry the flags the shared server needs,
and the test server (tests/helpers/mlflow_auth_server.py) runs with the same ones.

Flags: PostgreSQL backend store, artifact proxy, basic-auth with the admin password from a secret,
``--allowed-hosts``, a health check on ``/health``. Basic-auth passwords travel only inside TLS: the
server's port is published by neither deployment; a TLS proxy (compose) or a TLS ingress (Kubernetes)
is the way in.
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


def test_compose_is_valid_yaml_with_the_three_services() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"postgres", "mlflow", "tls-proxy"}
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


def test_compose_reaches_the_server_only_through_tls() -> None:
    services = _compose()["services"]
    assert "ports" not in services["mlflow"] and "ports" not in services["postgres"]
    proxy = services["tls-proxy"]
    assert proxy["ports"] == ["443:443"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    caddyfile = (MLFLOW / "Caddyfile").read_text()
    site = caddyfile[caddyfile.index("{$MLFLOW_PUBLIC_HOST}:443"):]
    assert "tls /etc/caddy/certs/tls.crt /etc/caddy/certs/tls.key" in site
    assert "reverse_proxy mlflow:5000" in site
    env = dict(line.split("=", 1) for line in (MLFLOW / "env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["MLFLOW_PUBLIC_HOST"] in env["MLFLOW_ALLOWED_HOSTS"].split(",")  # the Host header the proxy passes


def test_kubernetes_ingress_terminates_tls_for_an_allowed_host() -> None:
    objects = render(MLFLOW)
    ingress = find(objects, "Ingress", "mlflow")
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert tls["secretName"] == "mlflow-tls" and rule["host"] in tls["hosts"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "mlflow"
    service = find(objects, "Service", "mlflow")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # not exposed but through the ingress
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    args = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert rule["host"] in args[args.index("--allowed-hosts") + 1].split(",")


def test_documented_tracking_uris_are_https() -> None:
    """Every tracking URI a person or a VM is told to use is https (the in-cluster service name aside)."""
    root = MLFLOW.parents[1]
    for path in [root / "infra" / "README.md", root / "infra" / "ray" / "cluster.yaml", root / "docs" / "serving.md"]:
        text = path.read_text()
        for line in text.splitlines():
            if "MLFLOW_TRACKING_URI" in line or "mlflow.example.com" in line:
                assert "http://mlflow" not in line and "http://<mlflow" not in line, (path.name, line)
