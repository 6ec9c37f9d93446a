"""infra/ray/cluster.yaml is a valid `ray up` config with the same conventions as Kubernetes.

The Ray cluster launcher for plain GPU VMs uses the same image, the same shared storage and the
same environment as the Kubernetes deployment. Validated with Ray's own launcher schema and config
preparation.
"""

from __future__ import annotations

import copy

import yaml

from tests.infra.manifests import INFRA, K8S, SHARED_MOUNT, pinned_versions

CLUSTER = INFRA / "ray" / "cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_accepts_the_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _config()
    validate_config(config)  # ray-schema.json shipped with the pinned ray
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["max_workers"] == len(config["provider"]["worker_ips"])


def test_ray_rejects_a_broken_launcher_config() -> None:
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import validate_config

    config = _config()
    config["docker"]["imagee"] = config["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def test_same_image_storage_and_ray_as_kubernetes() -> None:
    config = _config()
    k8s_image = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"][0]
    assert config["docker"]["image"] == f"{k8s_image['newName']}:{k8s_image['newTag']}"
    run_options = " ".join(config["docker"]["run_options"])
    assert f"--volume {SHARED_MOUNT}:{SHARED_MOUNT}" in run_options
    assert "--env-file /etc/memseg/memseg.env" in run_options
    assert "--gpus all" in " ".join(config["docker"]["worker_run_options"])
    assert any(SHARED_MOUNT in cmd for cmd in config["initialization_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--num-cpus=0" in head
    assert f"ray.__version__ == '{pinned_versions()['ray']}'" in " ".join(config["setup_commands"])


def test_env_file_documents_what_the_cluster_needs() -> None:
    header = CLUSTER.read_text().split("cluster_name:")[0]
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD"):  # fmt: skip
        assert f"{name}=" in header, name
