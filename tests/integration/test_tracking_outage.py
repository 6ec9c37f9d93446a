"""MLflow outages during a sweep, on a real 2-node Ray cluster and a real ``mlflow server``: nothing is lost.

The server is killed from inside a trial at a chosen training step (so the outage lands where the drill
wants it, whatever the machine's speed); the MLflow client's retry budget is made short. Tune's own
results on storage are the truth the runs are checked against:

* killed mid-sweep and restarted by the test about 12 s later: the sweep ends normally and every trial has
  exactly one run, with every point its ``result.json`` holds and a terminal status;
* killed during the last trial's last steps and not back before the driver ends: the command exits
  non-zero naming what MLflow lacks; after a restart, ``memseg sweep --sync`` writes it, and no run,
  parent or trial, is left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
from tests.helpers.mlflow_server import MlflowServer, restart_server, start_mlflow_server

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
METRIC = "best_val_pixel_auroc"


class KillServerAt(Callback):
    """At ``step``, the first trial to get there kills the tracking server (process group in ``pid_file``)."""

    def __init__(self, step: int, pid_file: str, once_flag: str) -> None:
        self.step = step
        self.pid_file = pid_file
        self.once_flag = once_flag

    def on_step(self, step: int) -> None:
        if step != self.step:
            return
        try:
            os.remove(self.once_flag)  # only the first trial to get here
        except FileNotFoundError:
            return
        os.killpg(int(Path(self.pid_file).read_text()), signal.SIGKILL)


def drive(spec_path: str, storage: str, sweep_id: str, uri: str, step: str, pid_file: str, flag: str) -> None:
    """The sweep's driver, in a process of its own; prints ``{"ok", "untracked"}`` (JSON) last."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def callbacks(trial_id: str, cfg: MemSegConfig) -> list[TrainingCallback]:
        return [KillServerAt(int(step), pid_file, flag)]

    def factory(plan: CategoryPlan) -> Trainable:
        return make_trainable(plan.category, plan.base_config, extra_callbacks=callbacks)

    spec = load_sweep_spec(spec_path).with_changes({"storage.path": storage})
    tracked = run_tracked_sweep(spec, tracking_uri=uri, sweep_id=sweep_id, trainable_factory=factory)
    print(json.dumps({"ok": tracked.ok, "untracked": list(tracked.untracked)}), flush=True)


def _setup(tmp_path: Path, num_samples: int) -> tuple[Path, dict[str, Any]]:
    g = load_sweep_spec("smoke").data.generate
    assert g is not None
    root = tmp_path / "data"
    ensure_dataset(root, ["bottle"], size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                   n_test_defect=g.n_test_defect, seed=g.seed)
    smoke = load_sweep_spec("smoke").model_dump()
    smoke.update(name="outage", categories=["bottle"])
    smoke["data"] = {"root": str(root)}
    smoke["search"].update(num_samples=num_samples, max_concurrent=1, n_startup_trials=1)
    smoke["scheduler"] = {"kind": "fifo"}
    smoke["budget"]["measure_trials_on_test"] = False
    spec_path = tmp_path / "outage.yaml"
    spec_path.write_text(yaml.safe_dump(smoke))
    return spec_path, smoke


def _env(cluster: Any, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **cluster.env, "PYTHONUNBUFFERED": "1",
           # A short retry budget, so the outage outlasts it.
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def _start_driver(tmp_path: Path, spec_path: Path, sweep_id: str, server: MlflowServer, step: int,
                  env: dict[str, str]) -> subprocess.Popen:
    pid_file, flag = tmp_path / "server.pid", tmp_path / "kill.once"
    pid_file.write_text(str(server.proc.pid))
    flag.write_text("x")
    code = "import sys; from tests.integration.test_tracking_outage import drive; drive(*sys.argv[1:])"
    args = [str(spec_path), str(tmp_path / "storage"), sweep_id, server.uri, str(step), str(pid_file), str(flag)]
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _check_complete(client: MlflowClient, storage: Path, sweep_id: str, n_trials: int) -> None:
    """Every trial: one run, every point of its result.json, a terminal status; the parent closed."""
    exp = client.get_experiment_by_name(schema.experiment_name(sweep_id))
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_PARENT]
    children: dict[str, Any] = {}
    for r in runs:
        if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_TRIAL:
            assert r.data.tags[schema.TAG_TRIAL] not in children, "two runs for one trial"
            children[r.data.tags[schema.TAG_TRIAL]] = r
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get(schema.TAG_BEST_TRIAL) in children
    folders = sorted((storage / sweep_id / "bottle").glob("memseg_bottle_*"))
    assert len(folders) == n_trials == len(children)
    for folder in folders:
        trial_id = folder.name.removeprefix("memseg_bottle_")
        steps = [json.loads(line)["step"] for line in (folder / "result.json").read_text().splitlines()]
        run = children[trial_id]
        assert run.info.status == "FINISHED", (trial_id, run.info.status)
        logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, METRIC))
        assert logged == sorted(steps), (trial_id, logged, steps)
        assert run.data.params["data.category"] == "bottle"


def test_outage_mid_sweep_loses_nothing(ray_cluster, tmp_path: Path) -> None:
    spec_path, _ = _setup(tmp_path, num_samples=4)  # the outage and the restart end before the last trial
    server = start_mlflow_server(tmp_path / "mlflow")
    sweep_id = f"outage-{uuid.uuid4().hex[:6]}"
    env = _env(ray_cluster, tmp_path)
    driver = _start_driver(tmp_path, spec_path, sweep_id, server, step=4, env=env)
    try:
        deadline = time.monotonic() + 300
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.proc.poll() is not None, "the trial did not kill the server"
        time.sleep(12)  # the outage: longer than the client's retry budget (about 3 s here)
        server = restart_server(server)
        out, _ = driver.communicate(timeout=600)
        print(out[-8000:])
        assert driver.returncode == 0
        assert json.loads(out.strip().splitlines()[-1]) == {"ok": True, "untracked": []}
        assert "MLflow tracking at" in out  # the outage was seen (one line per pause) ...
        assert out.count("Traceback") == 0  # ... without a traceback per hook
        _check_complete(MlflowClient(server.uri), tmp_path / "storage", sweep_id, 4)
    finally:
        if driver.poll() is None:
            driver.kill()
        server.stop()


def test_outage_at_the_end_is_named_then_synced(ray_cluster, tmp_path: Path) -> None:
    spec_path, _ = _setup(tmp_path, num_samples=1)
    server = start_mlflow_server(tmp_path / "mlflow")
    sweep_id = f"late-{uuid.uuid4().hex[:6]}"
    env = _env(ray_cluster, tmp_path)
    driver = _start_driver(tmp_path, spec_path, sweep_id, server, step=15, env=env)  # the trial's last step
    try:
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    print(out[-8000:])
    assert driver.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert not result["ok"] and result["untracked"]
    assert "tracking incomplete" in out and "--sync --sweep-id " + sweep_id in out
    assert any("parent runs of bottle: not closed" in u for u in result["untracked"])

    server = restart_server(server)
    try:
        sync = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "sweep", "--config", str(spec_path), "--sync", "--sweep-id",
             sweep_id, "--storage", str(tmp_path / "storage")],
            env={**env, "MLFLOW_TRACKING_URI": server.uri}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        print(sync.stdout[-4000:], sync.stderr[-4000:], sep="\n")
        assert sync.returncode == 0
        assert "holds every trial's record" in sync.stdout
        client = MlflowClient(server.uri)
        _check_complete(client, tmp_path / "storage", sweep_id, 1)
        exp = client.get_experiment_by_name(schema.experiment_name(sweep_id))
        assert exp is not None
        assert not [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"]
        again = subprocess.run(sync.args, env={**env, "MLFLOW_TRACKING_URI": server.uri}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0  # idempotent
        _check_complete(client, tmp_path / "storage", sweep_id, 1)
    finally:
        server.stop()
