"""Leftovers of an interrupted register or gate are cleaned on the next run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelStatus

from pipelines import registry, schema
from pipelines.promotion import gate_workdir, remove_stale_gate_dirs
from pipelines.tracking import local_store_uri


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_gate_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"memseg-gate-{_dead_pid()}-abc"
    (dead / "challenger").mkdir(parents=True)
    (dead / "challenger" / "best_model.pt").write_bytes(b"x" * 100)
    mine = gate_workdir(tmp_path)  # removes the dead one first
    assert not dead.exists()
    assert mine.is_dir() and mine.name.startswith("memseg-gate-")
    assert remove_stale_gate_dirs(tmp_path) == []  # this process is alive: its folder stays
    assert mine.is_dir()


def test_a_pending_logged_model_is_deleted_not_reused(tmp_path: Path) -> None:
    uri = local_store_uri(tmp_path)
    client = registry.tracking_client(uri)
    experiment_id = client.create_experiment("leftovers")
    tags = {schema.TAG_SWEEP: "s1", schema.TAG_TRIAL: "t1"}
    pending = mlflow.initialize_logged_model(name="model", tags=tags, experiment_id=experiment_id)
    assert pending.status == LoggedModelStatus.PENDING  # as a register killed while logging leaves it
    ready = mlflow.initialize_logged_model(name="model", tags=tags, experiment_id=experiment_id)
    mlflow.finalize_logged_model(ready.model_id, LoggedModelStatus.READY)

    found = registry._find_logged_model(client, experiment_id, "s1", "t1")
    assert found is not None and found.model_id == ready.model_id
    left = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    assert [m.model_id for m in left] == [ready.model_id]
