"""The Kubernetes manifests render, validate against their schemas, and agree with the code.

Covers the KubeRay RayCluster/RayJob, the shared volume, the Secrets and the MLflow server:
``kubectl kustomize`` renders, every rendered object is schema-valid (KubeRay fields included), the
Ray version equals pyproject's pin.
"""

from __future__ import annotations

import copy
import fnmatch
import shlex
from urllib.parse import urlsplit

import pytest
import yaml

from tests.infra.manifests import (
    IMAGE_PLACEHOLDER,
    INFRA,
    K8S,
    MLFLOW,
    ROOT,
    SHARED_MOUNT,
    find,
    load_yaml_docs,
    pinned_versions,
    pod_templates,
    render,
    schema_errors,
)

KUSTOMIZATIONS = {"infra/k8s": K8S, "infra/mlflow": MLFLOW}


def _kustomization(directory):
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_rendered_object_is_schema_valid(name: str) -> None:
    objects = render(KUSTOMIZATIONS[name])
    assert objects
    errors = [e for obj in objects for e in schema_errors(obj)]
    assert not errors, "\n".join(errors)


def test_secrets_template_is_schema_valid_and_not_deployed() -> None:
    secrets = load_yaml_docs(K8S / "secrets.template.yaml")
    assert {s["metadata"]["name"] for s in secrets} == {"memseg-ray-token", "memseg-mlflow-credentials", "mlflow-secrets"}
    assert not [e for s in secrets for e in schema_errors(s)]
    assert not [o for o in render(K8S) if o["kind"] == "Secret"], "no Secret values may be rendered from git"


def test_the_rendered_set_is_the_documented_one() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render(K8S))
    assert kinds == [
        ("ConfigMap", "memseg-settings"),
        ("Job", "memseg-data-download"),
        ("Namespace", "memseg"),
        ("PersistentVolumeClaim", "memseg-shared"),
        ("RayCluster", "memseg"),
        ("RayJob", "memseg-pipeline-paper"),
    ]
    # Every object carries the runbook's step label, so `kubectl apply -k ... -l memseg.io/step=X` works.
    steps = {o["metadata"]["name"]: o["metadata"].get("labels", {}).get("memseg.io/step") for o in render(K8S)}
    assert steps == {
        "memseg": "cluster", "memseg-settings": "cluster", "memseg-shared": "cluster",
        "memseg-data-download": "data", "memseg-pipeline-paper": "sweep",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda rc: rc["spec"].update(authOption={"mode": "token"}), "'authOption' was unexpected"),
        (lambda rc: rc["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "is not of type 'string'"),
        (lambda rc: rc["spec"]["authOptions"].update(mode="tokens"), "is not one of"),
        (
            lambda rc: rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(resource={}),
            "'resource' was unexpected",
        ),
        (lambda rc: rc["spec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required property"),
    ],
    ids=["spec-typo", "start-param-int", "auth-mode", "container-typo", "missing-group-name"],
)
def test_schema_check_catches_broken_rayclusters(mutate, expected: str) -> None:
    rc = copy.deepcopy(find(render(K8S), "RayCluster"))
    mutate(rc)
    errors = schema_errors(rc)
    assert any(expected in e for e in errors), errors


def test_ray_version_equals_the_pin() -> None:
    ray_pin = pinned_versions()["ray"]
    assert find(render(K8S), "RayCluster")["spec"]["rayVersion"] == ray_pin


def test_head_takes_no_trials_and_gpu_workers_autoscale() -> None:
    rc = find(render(K8S), "RayCluster")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    [group] = spec["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] >= 1
    worker = group["template"]["spec"]["containers"][0]
    requests, limits = worker["resources"]["requests"], worker["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]  # extended resources: requests == limits
    tolerations = group["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_ray_token_comes_from_one_secret() -> None:
    objects = render(K8S)
    auth = find(objects, "RayCluster")["spec"]["authOptions"]
    assert auth["mode"] == "token"
    secret = auth["secretName"]
    template = {s["metadata"]["name"]: s for s in load_yaml_docs(K8S / "secrets.template.yaml")}
    assert "auth_token" in template[secret]["stringData"]  # the key KubeRay reads
    # The submitter pod talks to the Jobs API, which token auth protects too: same Secret, same key.
    [(_, submitter)] = [t for t in pod_templates(find(objects, "RayJob")) if t[0] == "submitter"]
    env = {e["name"]: e for e in _containers(submitter)[0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}


def test_rayjob_reuses_the_raycluster() -> None:
    objects = render(K8S)
    job, cluster = find(objects, "RayJob")["spec"], find(objects, "RayCluster")
    assert job["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # KubeRay rejects these with a clusterSelector (the cluster is not the job's to create or delete).
    assert "rayClusterSpec" not in job
    assert not job.get("shutdownAfterJobFinishes", False)
    assert job["submissionMode"] == "K8sJobMode"


def test_shared_volume_is_rwx_and_mounted_by_every_pod() -> None:
    objects = render(K8S)
    pvc = find(objects, "PersistentVolumeClaim", "memseg-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    storage = _kustomization(K8S)["configMapGenerator"][1]
    assert storage["name"] == "memseg-storage"
    literals = dict(item.split("=", 1) for item in storage["literals"])
    assert pvc["spec"]["storageClassName"] == literals["storageClassName"]  # the one place
    assert pvc["spec"]["resources"]["requests"]["storage"] == literals["size"]
    for obj in objects:
        for where, template in pod_templates(obj):
            if where == "submitter":
                continue  # only runs `ray job submit`
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]
                      if "persistentVolumeClaim" in v}  # fmt: skip
            mounts = {m["mountPath"]: m["name"] for c in _containers(template) for m in c.get("volumeMounts", [])}
            assert claims.get(mounts.get(SHARED_MOUNT)) == "memseg-shared", f"{obj['kind']} {where}"


def _entrypoint_paths() -> dict[str, str]:
    argv = shlex.split(find(render(K8S), "RayJob")["spec"]["entrypoint"])
    out = {}
    for i, arg in enumerate(argv):
        if arg in ("--data-root", "--storage"):
            out[arg] = argv[i + 1]
        if arg == "--set" and argv[i + 1].startswith("base.data.dtd_root="):
            out["dtd_root"] = argv[i + 1].split("=", 1)[1]
    return out


def test_sweep_paths_lie_on_the_shared_volume() -> None:
    paths = _entrypoint_paths()
    assert set(paths) == {"--data-root", "--storage", "dtd_root"}
    for value in paths.values():
        assert value.startswith(SHARED_MOUNT + "/"), value
    # The data Job writes exactly where the sweep reads.
    script = find(render(K8S), "Job", "memseg-data-download")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    lines = [shlex.split(line) for line in script.splitlines() if line.strip()]
    mvtec_to = next(argv[argv.index("--to") + 1] for argv in lines if argv[:4] == ["memseg", "data", "download", "mvtec"])
    dtd_to = next(argv[argv.index("--to") + 1] for argv in lines if argv[:4] == ["memseg", "data", "download", "dtd"])
    assert mvtec_to == paths["--data-root"]
    assert paths["dtd_root"] in (dtd_to, f"{dtd_to}/dtd")  # download_dtd returns <to> or <to>/dtd
    # The cluster-sized sweep configs default to the same volume (no flags needed on the cluster).
    for name in ("paper",):
        spec = yaml.safe_load((ROOT / "sweeps" / "configs" / f"{name}.yaml").read_text())
        assert spec["data"]["root"].startswith(SHARED_MOUNT + "/"), name
        assert spec["storage"]["path"].startswith(SHARED_MOUNT + "/"), name


def test_one_place_sets_the_image() -> None:
    image = _kustomization(K8S)["images"][0]
    assert image["name"] == IMAGE_PLACEHOLDER
    expected = f"{image['newName']}:{image['newTag']}"
    seen = [c["image"] for o in render(K8S) for _, t in pod_templates(o) for c in _containers(t)]
    assert len(seen) >= 4 and set(seen) == {expected}
    # Source manifests only name the placeholder, so no other file has to change.
    for path in K8S.glob("*.yaml"):
        for doc in load_yaml_docs(path):
            for _, template in pod_templates(doc):
                assert {c["image"] for c in _containers(template)} == {IMAGE_PLACEHOLDER}, path.name


def test_ray_pods_reach_mlflow_through_its_service_and_allowed_hosts() -> None:
    settings = find(render(K8S), "ConfigMap", "memseg-settings")["data"]
    uri = urlsplit(settings["MLFLOW_TRACKING_URI"])
    mlflow_objects = render(MLFLOW)
    service = find(mlflow_objects, "Service", "mlflow")
    host_parts = uri.hostname.split(".")
    assert host_parts[0] == service["metadata"]["name"]
    assert host_parts[1] == service["metadata"]["namespace"]
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    args = find(mlflow_objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert any(fnmatch.fnmatch(uri.netloc, pattern) for pattern in allowed), (uri.netloc, allowed)
    # Every Ray container gets the URI and the credentials (which hold no literal password).
    for _, template in pod_templates(find(render(K8S), "RayCluster")):
        refs = _containers(template)[0]["envFrom"]
        assert {"configMapRef": {"name": "memseg-settings"}} in refs
        assert {"secretRef": {"name": "memseg-mlflow-credentials"}} in refs


def test_mlflow_k8s_server_keeps_secrets_out_of_configmaps() -> None:
    import configparser

    objects = render(MLFLOW)
    text = next(o for o in objects if o["kind"] == "ConfigMap" and "basic_auth.ini" in o["data"])["data"]["basic_auth.ini"]
    ini = configparser.ConfigParser()
    ini.read_string(text)
    assert "admin_password" not in ini["mlflow"]
    auth_db = urlsplit(ini["mlflow"]["database_uri"])
    assert auth_db.scheme == "postgresql+psycopg2" and auth_db.password is None  # libpq: PGPASSWORD
    assert ini["mlflow"]["default_permission"] == "READ"
    container = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-secrets", name
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_infra_readme_names_every_manifest() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in [*K8S.glob("*.yaml"), *MLFLOW.glob("**/*.yaml"), INFRA / "ray" / "cluster.yaml"]:
        assert path.relative_to(ROOT).as_posix() in readme or path.name in readme, path
