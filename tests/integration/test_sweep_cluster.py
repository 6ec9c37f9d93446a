"""End-to-end sweeps: ``memseg sweep`` on a real 2-node Ray cluster, tracked by a real ``mlflow server``.

Each test runs the CLI in a subprocess (as a user would, with ``RAY_ADDRESS`` and
``MLFLOW_TRACKING_URI`` set) and then checks the Tune experiment on storage against the MLflow runs:

* the smoke sweep over 2 categories finishes; every trial has exactly one child run under its
  category's parent with params, metric history and heat-map images; nothing is left RUNNING; the
  best trial per category is identified; trials ran on both nodes;
* an injected failure before the first checkpoint is retried and ends FAILED, one after a
  checkpoint is retried from it and finishes, the rest of the sweep finishes (the real trainable
  wrapped through ``trainable_factory`` with a training callback that raises; nothing in the config);
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
import ray.cloudpickle
import yaml
from mlflow import MlflowClient

from memseg.config import MemSegConfig, load_config
from memseg.training.callbacks import Callback, TrainingCallback
from pipelines import schema
from pipelines.sweep_stage import run_tracked_sweep
from sweeps.dataset import ensure_dataset
from sweeps.driver import CategoryPlan
from sweeps.spec import load_sweep_spec
from sweeps.trainable import Trainable, make_trainable

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
    exp = client.get_experiment_by_name(schema.experiment_name(sweep_id))
    assert exp is not None, f"no MLflow experiment for sweep {sweep_id}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(schema.TAG_ROLE) == schema.ROLE_PARENT:
            assert tags[schema.TAG_CATEGORY] not in parents, "two parent runs for one category"
            parents[tags[schema.TAG_CATEGORY]] = run
        else:
            assert tags.get(schema.TAG_ROLE) == schema.ROLE_TRIAL
            assert tags[schema.TAG_TRIAL] not in children, f"two runs for trial {tags[schema.TAG_TRIAL]}"
            children[tags[schema.TAG_TRIAL]] = run
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
        mine = {tid: r for tid, r in children.items() if r.data.tags[schema.TAG_CATEGORY] == category}
        assert set(mine) == set(trials)  # exactly one run per trial, no strays
        parent = parents[category]
        assert parent.info.status == "FINISHED"
        scores = {}
        for tid, run in mine.items():
            assert run.data.tags[schema.TAG_PARENT] == parent.info.run_id
            assert run.info.status in ("FINISHED", "KILLED")
            assert run.data.tags[schema.TAG_SWEEP] == sweep_id
            assert run.data.tags[schema.TAG_FINGERPRINT] == parent.data.tags[schema.TAG_FINGERPRINT]
            assert run.data.params["data.category"] == category
            assert run.data.params["data.image_size"] == "64"
            assert "synthesis.perlin_threshold" in run.data.params and "optim.lr" in run.data.params
            history = client.get_metric_history(run.info.run_id, METRIC)
            assert history and {m.step for m in history} <= {8, 16}
            pngs = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
            # One stacked picture per evaluation that improved the trial's best (the first always does).
            assert 1 <= len(pngs) <= len(history), pngs
            nodes.add(run.data.tags[schema.TAG_NODE])
            scores[tid] = max(m.value for m in history)
        finished = [tid for tid, r in mine.items() if r.data.tags[schema.TAG_OUTCOME] == "finished"]
        assert finished, "ASHA lets the first trial to reach each rung go on"
        best = max(scores, key=scores.get)
        assert parent.data.tags[schema.TAG_BEST_TRIAL] == best
        assert parent.data.metrics[schema.parent_best_metric(METRIC)] == pytest.approx(scores[best])
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


# A trial's first attempt fails at this step, chosen by the trial's Perlin threshold (a swept value the
# trial has anyway): step 2 comes before the first checkpoint (step 8), step 12 after it.
FAIL_AT_STEP = {0.42: 2, 0.58: 12}


class FailAtStep(Callback):
    """Raises at ``step`` in a run that starts from scratch; a run resumed from a checkpoint gets past it."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.from_scratch = True

    def on_train_begin(self, start_step: int) -> None:
        self.from_scratch = start_step == 0

    def on_step(self, step: int) -> None:
        if self.from_scratch and step == self.step:
            raise RuntimeError(f"injected failure at step {step}")


def failing_callbacks(trial_id: str, cfg: MemSegConfig) -> list[TrainingCallback]:
    step = FAIL_AT_STEP.get(cfg.synthesis.perlin_threshold)
    return [] if step is None else [FailAtStep(step)]


def failing_trainable(plan: CategoryPlan) -> Trainable:
    """The real trainable, with :class:`FailAtStep` in the trials :data:`FAIL_AT_STEP` names."""
    return make_trainable(plan.category, plan.base_config, extra_callbacks=failing_callbacks)


def _write_failure_spec(tmp_path: Path, data_root: Path) -> Path:
    space = tmp_path / "failing-space.yaml"
    space.write_text("version: 1\nname: failing\nparams:\n"
                     "  synthesis.perlin_threshold: {type: float, low: 0.4, high: 0.6}\n")
    smoke = load_sweep_spec("smoke").model_dump()
    smoke.update(name="failing", categories=["bottle"])
    smoke["data"] = {"root": str(data_root)}
    smoke["search"] = {"space": str(space), "num_samples": 3, "max_concurrent": 2, "n_startup_trials": 1,
                       "extra_points": [{"synthesis.perlin_threshold": t} for t in FAIL_AT_STEP]}
    smoke["scheduler"] = {"kind": "fifo"}
    smoke["failure"] = {"max_failures": 1}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(smoke))
    return path


def drive_failing_sweep(spec_path: str, storage: str, sweep_id: str, tracking_uri: str) -> None:
    """The failing sweep's driver: run in a process of its own by the test below, as the CLI would be.

    Prints the outcome counts of the category as the last line (JSON).
    """
    # The workers unpickle the trainable, FailAtStep included, without importing this module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = load_sweep_spec(spec_path).with_changes({"storage.path": storage})
    tracked = run_tracked_sweep(spec, tracking_uri=tracking_uri, sweep_id=sweep_id,
                                trainable_factory=failing_trainable)
    print(json.dumps(tracked.result.categories["bottle"].counts()), flush=True)


def test_failing_trial_is_retried_then_failed(ray_cluster, mlflow_server, data_root: Path, tmp_path: Path) -> None:
    sweep_id = f"failing-{uuid.uuid4().hex[:6]}"
    storage = tmp_path / "storage"
    env = _env(ray_cluster, mlflow_server)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    code = ("import sys; from tests.integration.test_sweep_cluster import drive_failing_sweep; "
            "drive_failing_sweep(*sys.argv[1:])")
    args = [str(_write_failure_spec(tmp_path, data_root)), str(storage), sweep_id, mlflow_server.uri]
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    print(out.stdout[-6000:], out.stderr[-6000:], sep="\n")  # shown by pytest on failure
    assert out.returncode == 0
    # The sweep goes on and finishes the other trials.
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"failed": 1, "finished": 2}

    client = MlflowClient(mlflow_server.uri)
    _, children = _runs(client, sweep_id)
    trials = _tune_trials(storage, sweep_id, "bottle")
    assert set(children) == set(trials) and len(trials) == 3
    by_threshold = {float(r.data.params["synthesis.perlin_threshold"]): r for r in children.values()}
    assert len(by_threshold) == 3 and set(FAIL_AT_STEP) < set(by_threshold)
    assert not [k for r in children.values() for k in r.data.params if "fail" in k]  # no injection in the params

    early = by_threshold[0.42]  # fails before the first checkpoint: every attempt fails
    assert early.info.status == "FAILED"
    assert early.data.tags[schema.TAG_FAILURES] == "2"  # the first attempt and one retry
    assert "injected failure at step 2" in early.data.tags[schema.TAG_ERROR]
    assert trials[early.data.tags[schema.TAG_TRIAL]] == "ERROR"

    late = by_threshold[0.58]  # fails after the step-8 checkpoint: the retry resumes from it and finishes
    assert late.info.status == "FINISHED"
    assert late.data.tags[schema.TAG_FAILURES] == "1"
    steps = [m.step for m in client.get_metric_history(late.info.run_id, METRIC)]
    assert sorted(steps) == [8, 16]  # step 8 was not trained twice

    (other,) = (r for t, r in by_threshold.items() if t not in FAIL_AT_STEP)
    assert other.info.status == "FINISHED"
    assert schema.TAG_FAILURES not in other.data.tags
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
