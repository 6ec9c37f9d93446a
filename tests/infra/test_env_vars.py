"""Every environment variable the code reads is provided where it runs, or has a documented default.

The places a sweep runs: the Ray pods on Kubernetes (container env, envFrom ConfigMap/Secret, the
variables KubeRay's token auth injects, the image's ENV) and the `ray up` containers (the image's
ENV plus /etc/memseg/memseg.env). infra/README.md's table documents each variable and its default.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.infra.env_scan import env_reads, env_reads_in
from tests.infra.manifests import INFRA, K8S, find, load_yaml_docs, pod_templates, render
from tests.infra.test_image import DOCKERFILE, _env

# Read by the libraries memseg drives rather than by memseg's own code, and needed all the same.
LIBRARY_READS = {
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",  # mlflow client
    "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",  # ray token auth (on by default for local clusters in 2.60)
    "HF_HOME", "HF_HUB_OFFLINE",  # timm/huggingface_hub weights cache, no download on workers
    "RAY_ADDRESS",  # ray.init() in the job driver
}  # fmt: skip
NOT_A_DEFAULT = {"", "-", "—", "required", "none"}


def readme_table() -> dict[str, tuple[str, str]]:
    """``{VAR: (where it is set, default when unset)}`` from infra/README.md's variables table."""
    rows = {}
    for line in (INFRA / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([A-Z][A-Z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def needed() -> set[str]:
    return set(env_reads()) | LIBRARY_READS


def _secret_keys(name: str) -> set[str]:
    for secret in load_yaml_docs(K8S / "secrets.template.yaml"):
        if secret["metadata"]["name"] == name:
            return set(secret["stringData"])
    raise AssertionError(f"Secret {name} is referenced but not in secrets.template.yaml")


def kubernetes_ray_env() -> dict[str, set[str]]:
    """Variables present in each Ray container on Kubernetes (head and every worker group)."""
    objects = render(K8S)
    cluster = find(objects, "RayCluster")
    configmaps = {o["metadata"]["name"]: set(o.get("data", {})) for o in objects if o["kind"] == "ConfigMap"}
    image_env = set(_env(DOCKERFILE))
    auth = cluster["spec"].get("authOptions", {})
    injected = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} if auth.get("mode") == "token" and auth.get("secretName") else set()
    out = {}
    for where, template in pod_templates(cluster):
        container = template["spec"]["containers"][0]
        names = {e["name"] for e in container.get("env", [])} | image_env | injected
        for ref in container.get("envFrom", []):
            if "configMapRef" in ref:
                names |= configmaps[ref["configMapRef"]["name"]]
            if "secretRef" in ref:
                names |= _secret_keys(ref["secretRef"]["name"])
        # A Ray job's driver and its tasks get RAY_ADDRESS from the job supervisor.
        out[where] = names | {"RAY_ADDRESS"}
    return out


def launcher_env() -> set[str]:
    header = (INFRA / "ray" / "cluster.yaml").read_text().split("cluster_name:")[0]
    return set(re.findall(r"#\s+([A-Z][A-Z0-9_]+)=", header)) | set(_env(DOCKERFILE)) | {"RAY_ADDRESS"}


def test_scanner_finds_every_form_of_read(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import os\nfrom os import environ\nNAME = 'E_CONST'\nCREDS = ('E_T1', 'E_T2')\n"
        "def f():\n"
        "    os.environ.get('E_GET'); os.getenv('E_GETENV'); os.environ['E_SUB']\n"
        "    'E_IN' in os.environ; environ.get(NAME); os.environ.setdefault('E_SETDEF', 'x')\n"
        "    os.environ['E_WRITE'] = '1'\n"
        "    return {k: os.environ[k] for k in CREDS}\n"
    )
    assert env_reads_in(src) == {"E_GET", "E_GETENV", "E_SUB", "E_IN", "E_CONST", "E_T1", "E_T2"}


def test_code_reads_the_variables_the_platform_relies_on() -> None:
    reads = env_reads()
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        assert name in reads, f"no code reads {name} any more: update LIBRARY_READS and the runbook"


def test_every_variable_is_documented() -> None:
    table = readme_table()
    missing = sorted(needed() - set(table))
    assert not missing, f"infra/README.md's variables table lacks {missing}"


def test_every_variable_reaches_the_ray_pods_on_kubernetes() -> None:
    table = readme_table()
    for where, provided in kubernetes_ray_env().items():
        lacking = sorted(
            name for name in needed() - provided if table.get(name, ("", ""))[1].lower() in NOT_A_DEFAULT
        )
        assert not lacking, f"RayCluster {where}: {lacking} neither provided nor defaulted"
    # The must-haves are provided outright, not defaulted.
    for where, provided in kubernetes_ray_env().items():
        assert provided >= LIBRARY_READS, f"{where}: {LIBRARY_READS - provided}"


def test_every_variable_reaches_the_ray_up_containers() -> None:
    table = readme_table()
    provided = launcher_env()
    lacking = sorted(name for name in needed() - provided if table.get(name, ("", ""))[1].lower() in NOT_A_DEFAULT)
    assert not lacking, f"infra/ray/cluster.yaml: {lacking} neither provided nor defaulted"
    assert provided >= LIBRARY_READS, LIBRARY_READS - provided


def test_no_literal_secret_in_the_manifests() -> None:
    for path in K8S.glob("*.yaml"):
        if path.name == "secrets.template.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            for _, template in pod_templates(doc or {"kind": ""}):
                for container in template["spec"]["containers"]:
                    for env in container.get("env", []):
                        if any(word in env["name"] for word in ("PASSWORD", "TOKEN", "SECRET")):
                            assert "valueFrom" in env, f"{path.name}: {env['name']} is a literal"
