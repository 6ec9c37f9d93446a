"""A smoke sweep submitted with `ray job submit` to a multi-node cluster, as on the GPU cluster.

The cluster is the one infra/ describes, scaled down: a head started with
``--num-cpus 0`` (no trial lands on it, as in infra/k8s/raycluster.yaml) plus two worker nodes, the
sweep submitted through the Jobs API with the MLflow address and credentials passed only as
``runtime_env`` env vars (the cluster's processes were started without them), Tune storage on a path
every node shares, and the tracking server the team would use (PostgreSQL + basic-auth). The job
must finish and every MLflow run it made must be complete (none left RUNNING, none FAILED).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.local_cluster import LocalRayCluster, NodeSpec, ray_executable, start_local_cluster
from tests.helpers.mlflow_auth_server import ADMIN_USER, MlflowAuthServer

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.postgres, pytest.mark.slow]

JOB_TIMEOUT_S = 1500.0
SWEEPS_USER, SWEEPS_PASSWORD = "sweeps", "sweeps-test-pw-123"


def start_jobs_cluster(worker_cpus: tuple[int, ...] = (1, 1)) -> tuple[LocalRayCluster, str]:
    """Head with ``--num-cpus=0`` and the dashboard (Jobs API), plus one worker node per entry.

    Returns:
        The cluster handle and the Jobs API address ``http://127.0.0.1:<port>``.
    """
    # The nodes get neither MLflow variables nor RAY_ADDRESS: only the job's runtime_env may supply them.
    node_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    cluster = start_local_cluster([NodeSpec(0), *(NodeSpec(c) for c in worker_cpus)], object_store_mb=200,
                                  dashboard=True, node_env=node_env, temp_prefix="rj")
    assert cluster.dashboard_url is not None
    return cluster, cluster.dashboard_url


@pytest.fixture(scope="module")
def jobs_cluster() -> Iterator[tuple[LocalRayCluster, str]]:
    cluster, jobs_address = start_jobs_cluster()
    try:
        yield cluster, jobs_address
    finally:
        cluster.stop()


def _node_cpus(cluster: LocalRayCluster) -> list[float]:
    code = "import ray, json; ray.init(); print(json.dumps(sorted(n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive'])))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **cluster.env}, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_job(jobs_address: str, env: dict[str, str], job_id: str) -> tuple[str, str]:
    """Poll the Jobs API until the job ends; return (final status, logs).

    The client runs in a subprocess so that it reads this cluster's token from ``env`` (the test
    process may already hold another cluster's auth settings).
    """
    code = (
        "import sys; from ray.job_submission import JobSubmissionClient; "
        "c = JobSubmissionClient(sys.argv[1]); print(c.get_job_status(sys.argv[2]).value); "
        "print(c.get_job_logs(sys.argv[2]) if len(sys.argv) > 3 else '')"
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code, jobs_address, job_id], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        if out.returncode == 0:
            status = out.stdout.strip().splitlines()[0]
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
        time.sleep(10)
    logs = subprocess.run([sys.executable, "-c", code, jobs_address, job_id, "logs"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return status, logs.stdout + logs.stderr


def test_smoke_sweep_through_ray_job_submit(
    jobs_cluster: tuple[LocalRayCluster, str],
    mlflow_auth_server: MlflowAuthServer,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    from pipelines.tracking import experiment_name

    cluster, jobs_address = jobs_cluster
    assert _node_cpus(cluster) == [0.0, 1.0, 1.0]  # head takes no trial; two 1-CPU workers
    mlflow_auth_server.create_user(SWEEPS_USER, SWEEPS_PASSWORD)

    storage = tmp_path / "shared" / "sweeps"  # one path every node of this machine sees, like the RWX volume
    sweep_id = f"jobsubmit-{uuid.uuid4().hex[:6]}"
    runtime_env = {"env_vars": {**mlflow_auth_server.client_env(SWEEPS_USER), "MEMSEG_NUM_THREADS": "1"}}
    entrypoint = [
        "memseg", "sweep", "--config", "smoke", "--categories", "bottle", "--sweep-id", sweep_id,
        "--data-root", str(synthetic_root), "--storage", str(storage), "--set", "search.num_samples=2",
    ]  # fmt: skip
    submit_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    submit_env.update({k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"})
    job_id = f"smoke-{sweep_id}"
    submit = subprocess.run(
        [ray_executable(), "job", "submit", "--address", jobs_address, "--submission-id", job_id, "--no-wait",
         "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
        env=submit_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    status, logs = _wait_for_job(jobs_address, submit_env, job_id)
    assert status == "SUCCEEDED", f"{status}\n--- job logs ---\n{logs[-8000:]}"

    # Tune wrote its experiment to the shared path (the trials ran on the worker nodes).
    assert any(storage.rglob("*")), f"nothing under the shared storage {storage}"

    mlflow_auth_server.as_user(monkeypatch, ADMIN_USER)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(sweep_id))
    assert experiment is not None, f"no MLflow experiment for {sweep_id}; job logs:\n{logs[-4000:]}"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("memseg.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("memseg.role") == "trial"]
    assert [r.data.tags.get("category") for r in parents] == ["bottle"]
    assert parents[0].info.status == "FINISHED"
    assert len(trials) == 2
    for run in trials:
        assert run.info.status in ("FINISHED", "KILLED"), (run.info.run_name, run.info.status)  # never RUNNING
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "val_pixel_auroc" in run.data.metrics, run.data.metrics
    # The runtime_env credentials were the ones used: the sweeps user created (so manages) the experiment.
    assert mlflow_auth_server.permission(SWEEPS_USER, "experiment", experiment.experiment_id) == "MANAGE"
