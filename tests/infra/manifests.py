"""Reading and checking infra/: render the kustomizations, validate every object against its schema.

The checks use the real tools from the registries: ``kubectl kustomize`` renders, the built-in
kinds are validated with the strict Kubernetes JSON schemas shipped by ``kubernetes-validate``, the
KubeRay kinds with ``schemas/kuberay-ray.io-v1.schema.json`` (whose
embedded Kubernetes types point into the same strict schemas).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
MLFLOW = INFRA / "mlflow"
SHARED_MOUNT = "/mnt/cluster_storage"
IMAGE_PLACEHOLDER = "memseg-platform"
KUBERNETES_VERSION = "1.30.0"  # oldest Kubernetes the manifests target
KUBERAY_SCHEMA = Path(__file__).with_name("schemas") / "kuberay-ray.io-v1.schema.json"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not on PATH: run scripts/infra_tools.sh (scripts/test.sh does)")
    return path


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize <directory>`` parsed into objects."""
    kubectl = require_tool("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str | None = None) -> dict:
    hits = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod a workload object creates."""
    spec = obj.get("spec", {})
    kind = obj["kind"]
    if kind == "RayCluster":
        out = [("head", spec["headGroupSpec"]["template"])]
        out += [(f"worker group {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
        return out
    if kind == "RayJob":
        out = []
        if "submitterPodTemplate" in spec:
            out.append(("submitter", spec["submitterPodTemplate"]))
        if "rayClusterSpec" in spec:
            out += pod_templates({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})
        return out
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        return [(kind.lower(), spec["template"])]
    return []


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_versions() -> dict[str, str]:
    """``{normalized name: version}`` of every ``==`` pin in pyproject's dependencies."""
    from packaging.requirements import Requirement

    pins = {}
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonical(req.name)] = exact[0]
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _kuberay_validator(kind: str) -> Any:
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    version_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    k8s_defs = json.loads((version_dir / "_definitions.json").read_text())
    kuberay = json.loads(KUBERAY_SCHEMA.read_text())
    if kind not in kuberay["$defs"]:
        return None
    registry = Registry().with_resources(
        [(k8s_defs["$id"], Resource.from_contents(k8s_defs)), (kuberay["$id"], Resource.from_contents(kuberay))]
    )
    return jsonschema.Draft202012Validator({"$ref": f"{kuberay['$id']}#/$defs/{kind}"}, registry=registry)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of one rendered object, as ``Kind/name: path: message`` strings."""
    import kubernetes_validate

    kind = obj.get("kind", "")
    label = f"{kind}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") == "ray.io/v1":
        validator = _kuberay_validator(kind)
        if validator is None:
            return [f"{label}: no schema for ray.io/v1 kind {kind!r}"]
        return [
            f"{label}: {'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
            for err in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
        ]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.utils.ValidationError as err:
        return [f"{label}: {'.'.join(str(p) for p in err.path)}: {err.message}"]
    except kubernetes_validate.utils.SchemaNotFoundError as err:
        return [f"{label}: no schema: {err.message}"]
    return []
