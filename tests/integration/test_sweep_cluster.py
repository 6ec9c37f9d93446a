"""End-to-end sweeps: ``memseg sweep`` on a real 2-node Ray cluster, tracked by a real ``mlflow server``.

Each test runs the CLI in a subprocess (as a user would, with ``RAY_ADDRESS`` and
``MLFLOW_TRACKING_URI`` set) and then checks the Tune experiment on storage against the MLflow runs:

* the smoke sweep over 2 categories finishes; every trial has exactly one child run under its
  category's parent with params, metric history and heat-map images; nothing is left RUNNING; the
  best trial per category is identified; trials ran on both nodes;
* an injected failure before the first checkpoint is retried and ends FAILED, one after a
  checkpoint is retried from it and finishes, the rest of the sweep finishes;
* ``kill -9`` of the driver mid-sweep, then ``--resume``: finished trials are not rerun and the
  MLflow run count equals the trial count.

Trials are tiny (64 px, 16 steps, random backbone weights).
"""

from __future__ import annotations

import glob
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
from mlflow import MlflowClient

from memseg.config import load_config
from pipelines import tracking
from sweeps.dataset import ensure_dataset
from sweeps.spec import load_sweep_spec

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

METRIC = "best_val_pixel_auroc"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = load_sweep_spec("smoke").data.generate
    root = tmp_path_factory.mktemp("sweep_data")
    ensure_dataset(root, ["bottle", "carpet"], size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                   n_test_defect=g.n_test_defect, seed=g.seed)
    return root


def _env(cluster: Any, server: Any) -> dict[str, str]:
    env = {**os.environ, **cluster.env, "MLFLOW_TRACKING_URI": server.uri, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    return env


def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "sweep", *args]


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(_sweep_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    print(out.stdout[-6000:], out.stderr[-6000:], sep="\n")  # shown by pytest on failure
    return out


def _tune_trials(storage: Path, sweep_id: str, category: str) -> dict[str, str]:
    """Trial id -> status, from the category's latest Tune experiment state on storage."""
    # The newest state is the one whose name carries the latest start time (a restore writes a new file).
    # Not by mtime: Tune's final storage sync rewrites the restored run's old file too, after the new one.
    files = sorted(glob.glob(str(storage / sweep_id / category / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten right now
        return {}
    out = {}
    for trial_json, _meta in state["trial_data"]:
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def _result_lines(storage: Path, sweep_id: str, category: str, trial_id: str) -> int:
    path = storage / sweep_id / category / f"memseg_{category}_{trial_id}" / "result.json"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _runs(client: MlflowClient, sweep_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parent run per category, child run per trial id) of a sweep's experiment."""
    exp = client.get_experiment_by_name(tracking.experiment_name(sweep_id))
    assert exp is not None, f"no MLflow experiment for sweep {sweep_id}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(tracking.TAG_ROLE) == "parent":
            assert tags[tracking.TAG_CATEGORY] not in parents, "two parent runs for one category"
            parents[tags[tracking.TAG_CATEGORY]] = run
        else:
            assert tags.get(tracking.TAG_ROLE) == "trial"
            assert tags[tracking.TAG_TRIAL] not in children, f"two runs for trial {tags[tracking.TAG_TRIAL]}"
            children[tags[tracking.TAG_TRIAL]] = run
    return parents, children


def test_smoke_sweep_two_categories(ray_cluster, mlflow_server, data_root: Path, tmp_path: Path) -> None:
    sweep_id = f"smoke-{uuid.uuid4().hex[:6]}"
    storage = tmp_path / "storage"
    out = _run(["--config", "smoke", "--data-root", str(data_root), "--storage", str(storage),
                "--sweep-id", sweep_id], _env(ray_cluster, mlflow_server), tmp_path)
    assert out.returncode == 0

    client = MlflowClient(mlflow_server.uri)
    parents, children = _runs(client, sweep_id)
    assert set(parents) == {"bottle", "carpet"}
    nodes = set()
    for category in ("bottle", "carpet"):
        trials = _tune_trials(storage, sweep_id, category)
        assert len(trials) == 3 and set(trials.values()) == {"TERMINATED"}
        mine = {tid: r for tid, r in children.items() if r.data.tags[tracking.TAG_CATEGORY] == category}
        assert set(mine) == set(trials)  # exactly one run per trial, no strays
        parent = parents[category]
        assert parent.info.status == "FINISHED"
        scores = {}
        for tid, run in mine.items():
            assert run.data.tags[tracking.PARENT_TAG] == parent.info.run_id
            assert run.info.status in ("FINISHED", "KILLED")
            assert run.data.tags[tracking.TAG_SWEEP] == sweep_id
            assert run.data.tags[tracking.TAG_FINGERPRINT] == parent.data.tags[tracking.TAG_FINGERPRINT]
            assert run.data.params["data.category"] == category
            assert run.data.params["data.image_size"] == "64"
            assert "synthesis.perlin_threshold" in run.data.params and "optim.lr" in run.data.params
            history = client.get_metric_history(run.info.run_id, METRIC)
            assert history and {m.step for m in history} <= {8, 16}
            pngs = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
            assert len(pngs) >= 2 * len(history)  # eval.heatmap_samples=2 per evaluation
            nodes.add(run.data.tags[tracking.TAG_NODE])
            scores[tid] = max(m.value for m in history)
        finished = [tid for tid, r in mine.items() if r.info.status == "FINISHED"]
        assert finished, "ASHA lets the first trial to reach each rung go on"
        best = max(scores, key=scores.get)
        assert parent.data.tags["best_trial_id"] == best
        assert parent.data.metrics[METRIC] == pytest.approx(scores[best])
        assert f"{category}: {scores[best]:.4f}  trial {best}" in out.stdout
        best_cfg = load_config(storage / sweep_id / category / "best_config.yaml")  # retrains the winner
        expected = {k: "None" if v is None else str(v) for k, v in best_cfg.flatten().items()}
        expected.pop("train.output_dir")
        assert expected == mine[best].data.params
        for tid in trials:  # storage.prune_finished: an ended trial keeps best_model.pt, not model.pt
            kept = {p.name for p in (storage / sweep_id / category).glob(f"*_{tid}/checkpoint_*/*")}
            assert "best_model.pt" in kept and not kept & {"model.pt", "train_state.pt"}, (tid, kept)
    assert len(nodes) == 2, "trials ran on both nodes of the cluster"
    working = glob.glob(f"{ray_cluster.temp_dir}/**/working_dirs/memseg_*", recursive=True)  # trials' local folders
    assert working and not [w for w in working if Path(w, "train").exists()], "local training output left behind"
    assert "MLflow: http://" in out.stdout


def _write_failure_spec(tmp_path: Path, data_root: Path) -> Path:
    space = tmp_path / "failing-space.yaml"
    space.write_text(
        "version: 1\nname: failing\nparams:\n"
        "  synthesis.perlin_threshold: {type: float, low: 0.4, high: 0.6}\n"
        "  train.fail_at_step: {type: categorical, choices: [null, 2, 12]}\n"
    )
    smoke = load_sweep_spec("smoke").model_dump()
    smoke.update(name="failing", categories=["bottle"])
    smoke["data"] = {"root": str(data_root)}
    smoke["search"] = {"space": str(space), "num_samples": 3, "max_concurrent": 2, "n_startup_trials": 1,
                       "extra_points": [{"train.fail_at_step": 2}, {"train.fail_at_step": 12}]}
    smoke["scheduler"] = {"kind": "fifo"}
    smoke["failure"] = {"max_failures": 1}
    path = tmp_path / "failing.yaml"
    import yaml

    path.write_text(yaml.safe_dump(smoke))
    return path


def test_failing_trial_is_retried_then_failed(ray_cluster, mlflow_server, data_root: Path, tmp_path: Path) -> None:
    sweep_id = f"failing-{uuid.uuid4().hex[:6]}"
    storage = tmp_path / "storage"
    out = _run(["--config", str(_write_failure_spec(tmp_path, data_root)), "--storage", str(storage),
                "--sweep-id", sweep_id], _env(ray_cluster, mlflow_server), tmp_path)
    assert out.returncode == 0  # the sweep goes on and finishes the other trials

    client = MlflowClient(mlflow_server.uri)
    _, children = _runs(client, sweep_id)
    trials = _tune_trials(storage, sweep_id, "bottle")
    assert set(children) == set(trials) and len(trials) == 3
    by_fail = {r.data.params["train.fail_at_step"]: r for r in children.values()}
    assert set(by_fail) == {"None", "2", "12"}

    early = by_fail["2"]  # fails before the first checkpoint: every attempt fails
    assert early.info.status == "FAILED"
    assert early.data.tags[tracking.TAG_FAILURES] == "2"  # the first attempt and one retry
    assert "injected failure" in early.data.tags[tracking.TAG_ERROR]
    assert trials[early.data.tags[tracking.TAG_TRIAL]] == "ERROR"

    late = by_fail["12"]  # fails after the step-8 checkpoint: the retry resumes from it and finishes
    assert late.info.status == "FINISHED"
    assert late.data.tags[tracking.TAG_FAILURES] == "1"
    steps = [m.step for m in client.get_metric_history(late.info.run_id, METRIC)]
    assert sorted(steps) == [8, 16]  # step 8 was not trained twice

    assert by_fail["None"].info.status == "FINISHED"
    assert "failed 1" in out.stdout


def test_sigkill_driver_then_resume(ray_cluster, mlflow_server, data_root: Path, tmp_path: Path) -> None:
    sweep_id = f"resume-{uuid.uuid4().hex[:6]}"
    storage = tmp_path / "storage"
    env = _env(ray_cluster, mlflow_server)
    args = ["--config", "smoke", "--data-root", str(data_root), "--storage", str(storage), "--sweep-id", sweep_id,
            "--set", "search.num_samples=4", "--set", "search.max_concurrent=1", "--set", "scheduler.kind=fifo"]
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(_sweep_cmd(*args), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    done_before: dict[str, set[str]] = {}
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-5000:]
            states = {c: _tune_trials(storage, sweep_id, c) for c in ("bottle", "carpet")}
            done_before = {c: {t for t, s in st.items() if s == "TERMINATED"} for c, st in states.items()}
            if sum(len(v) for v in done_before.values()) >= 2:
                break
            time.sleep(1)
        else:
            pytest.fail("no trial finished in time")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        log.close()
    lines_before = {
        (c, t): _result_lines(storage, sweep_id, c, t) for c, ids in done_before.items() for t in ids
    }
    client = MlflowClient(mlflow_server.uri)
    _, children_before = _runs(client, sweep_id)
    history_before = {
        t: len(client.get_metric_history(children_before[t].info.run_id, METRIC))
        for ids in done_before.values() for t in ids
    }

    out = _run(["--config", "smoke", "--resume", "--sweep-id", sweep_id, "--storage", str(storage),
                "--data-root", str(data_root)], env, tmp_path)
    assert out.returncode == 0

    parents, children = _runs(client, sweep_id)  # asserts: one parent per category, one run per trial
    assert set(parents) == {"bottle", "carpet"}
    all_trials = {}
    for category in ("bottle", "carpet"):
        trials = _tune_trials(storage, sweep_id, category)
        assert len(trials) == 4 and set(trials.values()) == {"TERMINATED"}
        all_trials.update(trials)
    assert set(children) == set(all_trials)
    assert len(children) == len(all_trials) == 8  # MLflow run count == trial count
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert all(r.info.status == "FINISHED" for r in parents.values())
    for (category, trial_id), n_lines in lines_before.items():  # finished trials were not rerun
        assert _result_lines(storage, sweep_id, category, trial_id) == n_lines
        assert len(client.get_metric_history(children[trial_id].info.run_id, METRIC)) == history_before[trial_id]
