"""Chaos drills of a sweep, as an operator meets them, on a real 2-node Ray cluster and a real ``mlflow server``.

* a corrupt image in ``train/good``: ``memseg sweep`` stops before any Ray work, naming the file; after
  the file is fixed the same command succeeds;
* a trial that fails for good: its category's parent run ends FAILED with the error's text (never a
  temporary ``error.txt`` path) and the summary shows it; once the cause is gone, ``--resume
  --retry-failed`` reruns the trial and the parent ends FINISHED with a best trial.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
import yaml
from mlflow import MlflowClient

from memseg.config import MemSegConfig
from memseg.training.callbacks import Callback, TrainingCallback
from pipelines import schema
from pipelines.sweep_stage import run_tracked_sweep
from sweeps.dataset import ensure_dataset
from sweeps.driver import CategoryPlan
from sweeps.spec import load_sweep_spec
from sweeps.trainable import Trainable, make_trainable

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _env(cluster: Any, server: Any, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **cluster.env, "MLFLOW_TRACKING_URI": server.uri, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    return env


def _data(tmp_path: Path) -> Path:
    g = load_sweep_spec("smoke").data.generate
    assert g is not None
    root = tmp_path / "data"
    ensure_dataset(root, ["bottle"], size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                   n_test_defect=g.n_test_defect, seed=g.seed)
    return root


def _runs(client: MlflowClient, sweep_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    exp = client.get_experiment_by_name(schema.experiment_name(sweep_id))
    assert exp is not None
    parents: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        tags = run.data.tags
        if tags.get(schema.TAG_ROLE) == schema.ROLE_PARENT:
            assert tags[schema.TAG_CATEGORY] not in parents
            parents[tags[schema.TAG_CATEGORY]] = run
        else:
            assert tags[schema.TAG_TRIAL] not in children
            children[tags[schema.TAG_TRIAL]] = run
    return parents, children


def test_corrupt_image_stops_the_sweep_before_ray_and_the_fixed_rerun_succeeds(
    ray_cluster, mlflow_server, tmp_path: Path
) -> None:
    root = _data(tmp_path)
    bad = root / "bottle" / "train" / "good" / "003.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated, as a copy cut short
    storage = tmp_path / "storage"
    sweep_id = f"corrupt-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "pipelines.cli", "sweep", "--config", "smoke", "--categories", "bottle",
           "--data-root", str(root), "--storage", str(storage), "--sweep-id", sweep_id,
           "--set", "search.num_samples=1", "--set", "scheduler.kind=fifo"]
    env = _env(ray_cluster, mlflow_server, tmp_path)
    first = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    print(first.stdout[-4000:], first.stderr[-4000:], sep="\n")
    assert first.returncode == 1
    assert f"{bad}: cannot decode image" in first.stderr
    assert "Traceback" not in first.stderr and "Traceback" not in first.stdout
    assert "node(s), resources" not in first.stdout  # the line printed once Ray is connected
    assert not (storage / sweep_id).exists()

    bad.write_bytes(good_bytes)  # the fix
    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    print(second.stdout[-4000:], second.stderr[-4000:], sep="\n")
    assert second.returncode == 0
    parents, children = _runs(MlflowClient(mlflow_server.uri), sweep_id)
    assert parents["bottle"].info.status == "FINISHED" and len(children) == 1


class FailWhileFlagged(Callback):
    """Raises at step 2 while ``flag`` exists: a cause the operator removes before retrying."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def on_step(self, step: int) -> None:
        if step == 2 and Path(self.flag).exists():
            raise RuntimeError(f"broken until {self.flag} is removed")


def drive(spec_path: str, storage: str, sweep_id: str, uri: str, flag: str, resume: str) -> None:
    """The driver of the failing sweep, in a process of its own; prints the category's summary (JSON) last."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def callbacks(trial_id: str, cfg: MemSegConfig) -> list[TrainingCallback]:
        return [FailWhileFlagged(flag)]

    def factory(plan: CategoryPlan) -> Trainable:
        return make_trainable(plan.category, plan.base_config, extra_callbacks=callbacks)

    spec = load_sweep_spec(spec_path).with_changes({"storage.path": storage})
    tracked = run_tracked_sweep(spec, tracking_uri=uri, sweep_id=sweep_id, trainable_factory=factory,
                                resume=resume == "1", retry_failed=resume == "1")
    res = tracked.result.categories["bottle"]
    print(json.dumps({"counts": res.counts(), "error": res.error, "ok": tracked.ok}), flush=True)


def test_failed_category_is_failed_with_its_error_then_retried(ray_cluster, mlflow_server, tmp_path: Path) -> None:
    root = _data(tmp_path)
    smoke = load_sweep_spec("smoke").model_dump()
    smoke.update(name="broken", categories=["bottle"])
    smoke["data"] = {"root": str(root)}
    smoke["search"].update(num_samples=1, max_concurrent=1, n_startup_trials=1)
    smoke["scheduler"] = {"kind": "fifo"}
    smoke["failure"] = {"max_failures": 1}
    spec_path = tmp_path / "broken.yaml"
    spec_path.write_text(yaml.safe_dump(smoke))
    flag = tmp_path / "broken.flag"
    flag.write_text("x")
    sweep_id = f"broken-{uuid.uuid4().hex[:6]}"
    env = _env(ray_cluster, mlflow_server, tmp_path)
    code = "import sys; from tests.integration.test_sweep_chaos import drive; drive(*sys.argv[1:])"

    def run(resume: bool) -> tuple[dict[str, Any], str]:
        args = [str(spec_path), str(tmp_path / "storage"), sweep_id, mlflow_server.uri, str(flag), "1" if resume else "0"]
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
        print(out.stdout[-5000:], out.stderr[-5000:], sep="\n")
        assert out.returncode == 0
        return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout

    first, stdout = run(resume=False)
    assert first["counts"] == {"failed": 1} and not first["ok"]
    assert "broken until" in first["error"] and "RuntimeError" in first["error"]
    assert "bottle: no result (no trial scored; trial" in stdout and "broken until" in stdout
    assert "--resume" in stdout and "--retry-failed" in stdout
    client = MlflowClient(mlflow_server.uri)
    parents, children = _runs(client, sweep_id)
    parent = parents["bottle"]
    assert parent.info.status == "FAILED"
    assert "broken until" in parent.data.tags[schema.TAG_ERROR]
    (child,) = children.values()
    assert child.info.status == "FAILED"
    error = child.data.tags[schema.TAG_ERROR]
    assert "error.txt" not in error and "session_" not in error  # the text, not the temporary file's path
    assert error.startswith("Failure # 2") and error.endswith("broken.flag is removed")  # the latest failure
    assert 'in on_step\n    raise RuntimeError' in error and "\x1b[" not in error  # with its frames, no colours
    assert len(error) <= 2100

    flag.unlink()  # the fix
    second, _ = run(resume=True)
    assert second["counts"] == {"finished": 1} and second["ok"] and second["error"] is None
    parents, children = _runs(client, sweep_id)
    assert parents["bottle"].info.status == "FINISHED"
    assert schema.TAG_ERROR not in parents["bottle"].data.tags
    assert parents["bottle"].data.tags[schema.TAG_BEST_TRIAL] == next(iter(children))
    assert [r.info.status for r in children.values()] == ["FINISHED"]
    shutil.rmtree(tmp_path / "storage", ignore_errors=True)
