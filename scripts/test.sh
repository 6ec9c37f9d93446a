#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the package with its test extras, checks lint
# (ruff) and types (mypy), then runs pytest. Services the tests need (Ray clusters, mlflow servers,
# PostgreSQL) are started and stopped by the test fixtures themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e ".[dev]"
bash scripts/infra_tools.sh  # hadolint, kubectl kustomize, kubernetes-validate, PostgreSQL (tests/infra)
bash scripts/browser_tools.sh  # Debian's chromium, for the MLflow UI browser test
# Ray's token auth (default on for local clusters in Ray 2.60) writes ~/.ray/auth_token; tests start
# their own clusters and must not pick up a stale RAY_ADDRESS or tracking URI from the caller.
unset RAY_ADDRESS MLFLOW_TRACKING_URI
echo "== lint: ruff check" && python3 -m ruff check .
echo "== types: mypy (memseg, sweeps, pipelines)" && python3 -m mypy
echo "== tests: pytest"
exec python3 -m pytest "$@"
