"""Driver-side MLflow tracking against a real ``mlflow server``, fed with synthetic Tune events.

The trials are plain records with the fields the callback reads from ``ray.tune.experiment.Trial``;
the checkpoints are real ``ray.tune.Checkpoint`` folders with heat-map PNGs; the server is real
(SQLite backend, HTTP). The end-to-end runs with real Tune trials are in test_sweep_cluster.py.
"""

from __future__ import annotations

import getpass
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from mlflow import MlflowClient

from memseg.config import field_names
from memseg.visualize import SEPARATOR_PX
from pipelines import schema, tracking
from sweeps import driver
from sweeps.spec import load_sweep_spec
from sweeps.status import board_for  # noqa: F401  (imports ray.tune, as the driver does)
from tests.helpers.ray_cluster import free_port

pytestmark = pytest.mark.mlflow


@dataclass
class TrialRecord:
    """The fields of a Tune ``Trial`` the callback uses."""

    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0
    path: str = ""
    error_file: str | None = None
    error: str | None = None

    def get_error(self) -> str | None:
        return self.error


def _checkpoint(tmp_path: Path, name: str, n_images: int = 2) -> Any:
    from ray.tune import Checkpoint

    folder = tmp_path / name
    (folder / "heatmaps").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    for i in range(n_images):
        img = np.full((16, 16, 3), 40 * (i + 1), np.uint8)
        cv2.imwrite(str(folder / "heatmaps" / f"val_{i}.png"), img)
    return Checkpoint.from_directory(str(folder))


def _report(cb: Any, trial: TrialRecord, step: int, score: float, ckpt: Any | None = None,
            best: float | None = None) -> None:
    best = score if best is None else best
    result = {"step": step, "val_pixel_auroc": score, "best_val_pixel_auroc": best, "train_loss": 1.0 / step,
              "lr": 0.01, "training_iteration": step // 8, "time_total_s": 1.0, "trial_id": trial.trial_id,
              "node_ip": "127.0.0.1", "done": False}
    cb.on_trial_result(0, [], trial, result)
    trial.last_result = result
    if ckpt is not None:
        cb.on_checkpoint(0, [], trial, ckpt)


@pytest.fixture
def plan(synthetic_root: Path, tmp_path: Path):
    spec = load_sweep_spec("smoke").with_changes({"data.root": str(synthetic_root), "storage.path": str(tmp_path)})
    return driver.plan_sweep(spec, "track-test", ["bottle"])[0]


def _params(point: dict[str, Any]) -> dict[str, Any]:
    return {**point, "optim.lr": point["optim.lr[sgd]"]}


def test_trial_runs_statuses_metrics_images_and_restore(mlflow_server, plan, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    sweep = tracking.SweepTracking(uri, plan.sweep_id, spec_name="smoke", commit="abc123")
    cb = sweep.callback(plan)
    client = MlflowClient(uri)
    point = plan.space.default_point()

    finished = TrialRecord("t_00000", _params(point), status="RUNNING")
    pruned = TrialRecord("t_00001", _params({**point, "synthesis.perlin_threshold": 0.45}), status="RUNNING")
    failing = TrialRecord("t_00002", _params(point), status="RUNNING")
    orphan = TrialRecord("t_00003", _params(point), status="RUNNING")
    for t in (finished, pruned, failing, orphan):
        cb.on_trial_start(0, [], t)

    _report(cb, finished, 8, 0.6, _checkpoint(tmp_path, "c1"))
    _report(cb, finished, 16, 0.8, _checkpoint(tmp_path, "c2"))
    finished.status = "TERMINATED"
    cb.on_trial_complete(0, [], finished)

    _report(cb, pruned, 8, 0.4, _checkpoint(tmp_path, "c3"))
    _report(cb, pruned, 12, 0.35, _checkpoint(tmp_path, "c4"), best=0.4)  # no improvement: no picture
    pruned.status = "TERMINATED"  # stopped by ASHA before the step budget
    cb.on_trial_complete(0, [], pruned)

    _report(cb, failing, 8, 0.5)
    failing.num_failures, failing.error = 1, "RuntimeError: injected\n"
    cb.on_trial_recover(0, [], failing)
    cb.on_trial_start(0, [], failing)  # the retry starts a new actor: same run
    failing.num_failures, failing.status = 2, "ERROR"
    cb.on_trial_error(0, [], failing)
    _report(cb, orphan, 8, 0.3)  # its driver "dies" here: the run stays RUNNING

    # A new driver restores the study: Tune hands back the pickled callback, with no run cache (the first
    # driver's queued writes are done first here; those of a driver that died are reconciled from Tune's records).
    assert cb.flush()
    restored = pickle.loads(pickle.dumps(cb))
    assert restored._known_runs is None and restored._client_obj is None and restored._writer_obj is None
    assert restored.metrics_interval_s == cb.metrics_interval_s and restored._points == {}
    again = TrialRecord("t_00000", _params(point), status="TERMINATED", last_result=finished.last_result)
    restored.on_trial_start(0, [], again)
    restored.on_trial_complete(0, [], again)
    restored.on_experiment_end([again, pruned, failing])  # the orphan is unknown to the restored Tune
    sweep2 = tracking.SweepTracking(uri, plan.sweep_id, spec_name="smoke", commit="abc123")
    assert sweep2.experiment_id == sweep.experiment_id
    assert sweep2.parent_run_id(plan) == sweep.parent_run_id(plan)  # found by tags, not duplicated
    best = driver.TrialSummary("t_00000", "finished", 16, 0.8, finished.config, None)
    sweep2.finalize(plan, driver.CategoryResult("bottle", plan.experiment_path, best=best))

    runs = client.search_runs([sweep.experiment_id])
    parents = [r for r in runs if r.data.tags.get(schema.TAG_ROLE) == "parent"]
    children = {r.data.tags[schema.TAG_TRIAL]: r for r in runs if r.data.tags.get(schema.TAG_ROLE) == "trial"}
    assert len(parents) == 1 and len(runs) == 5  # one parent + exactly one run per trial
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial_id"] == "t_00000"
    assert parent.data.tags["best_run_id"] == children["t_00000"].info.run_id
    read = schema.ParentRun.from_run(parent)  # everything the later stages need is there
    assert (read.sweep_id, read.category, read.tune_metric) == (plan.sweep_id, "bottle", plan.metric)
    assert read.experiment_path == plan.experiment_path and read.finished
    # The parent holds the chosen trial's score under best.*, never under a key the trials chart.
    assert parent.data.metrics[schema.parent_best_metric(plan.metric)] == pytest.approx(0.8)
    assert read.best_score == pytest.approx(0.8)
    trial_keys = {k for r in children.values() for k in r.data.metrics}
    assert not set(parent.data.metrics) & trial_keys, set(parent.data.metrics) & trial_keys
    for key in parent.data.metrics:  # no series: one value, at step 0
        assert [m.step for m in client.get_metric_history(parent.info.run_id, key)] == [0], key
    # ... and the chosen trial's params, so no row mixes the base config with a trial's figures.
    assert parent.data.params == children["t_00000"].data.params
    assert {r.data.tags[schema.TAG_PARENT] for r in children.values()} == {parent.info.run_id}

    status = {tid: (r.info.status, r.data.tags.get(schema.TAG_OUTCOME)) for tid, r in children.items()}
    assert status == {
        "t_00000": ("FINISHED", "finished"),
        "t_00001": ("FINISHED", "pruned"),
        "t_00002": ("FAILED", "failed"),
        "t_00003": ("FINISHED", "pruned"),
    }
    # Pruned is a normal outcome, visible in the run name and found by the documented filter.
    names = {tid: r.info.run_name for tid, r in children.items()}
    assert names["t_00001"] == "bottle-t_00001 (pruned)" and names["t_00000"] == "bottle-t_00000"
    found = client.search_runs([sweep.experiment_id], filter_string="tags.`memseg.outcome` = 'pruned'")
    assert sorted(r.data.tags[schema.TAG_TRIAL] for r in found) == ["t_00001", "t_00003"]
    assert schema.PRUNED_FILTER == "tags.`memseg.outcome` = 'pruned'"  # the string docs/report.md gives
    # "Created by" and "Source" are filled in on every run, parent and trials.
    for r in runs:
        assert r.data.tags[schema.TAG_USER] == getpass.getuser(), r.info.run_name
        assert r.data.tags[schema.TAG_SOURCE_NAME], r.info.run_name
        assert r.data.tags[schema.TAG_SOURCE_GIT_COMMIT] == "abc123", r.info.run_name
    # The UI opens the experiment on its runs table, not the GenAI overview.
    experiment = client.get_experiment(sweep.experiment_id)
    assert experiment.tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND_TRAINING == "custom_model_development"
    assert children["t_00002"].data.tags[schema.TAG_FAILURES] == "2"
    assert "injected" in children["t_00002"].data.tags[schema.TAG_ERROR]

    run = children["t_00000"]
    assert run.data.tags[schema.TAG_SWEEP] == plan.sweep_id
    assert run.data.tags[schema.TAG_CATEGORY] == "bottle"
    assert run.data.tags[schema.TAG_GIT] == "abc123"
    assert run.data.tags[schema.TAG_FINGERPRINT] == plan.dataset_fingerprint
    assert run.data.params["data.category"] == "bottle"
    assert run.data.params["synthesis.perlin_threshold"] == "0.5"
    assert run.data.params["data.texture_source"] == "procedural"  # the smoke spec's explicit choice
    assert parent.data.params["data.texture_source"] == "procedural"
    assert children["t_00001"].data.params["synthesis.perlin_threshold"] == "0.45"
    # Every config field but the worker-local output folder, and nothing else (no test hook).
    assert set(run.data.params) == set(field_names()) - {"train.output_dir"}
    history = client.get_metric_history(run.info.run_id, "val_pixel_auroc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(8, 0.6), (16, 0.8)]
    assert "training_iteration" not in run.data.metrics and "time_total_s" not in run.data.metrics
    # Both improvements came within a minute of the trial's start: only the final best is pictured,
    # its panels stacked.
    images = _images(client, run.info.run_id)
    assert sorted(images) == [16] and all("heatmaps+step+" in p for p in images.values()), images
    local = client.download_artifacts(run.info.run_id, images[16], str(tmp_path / "dl"))
    stacked = cv2.imread(local)
    assert stacked.shape == (2 * 16 + SEPARATOR_PX, 16, 3)  # the checkpoint's two 16 px panels
    assert stacked[0, 0, 0] == 40 and stacked[-1, 0, 0] == 80
    assert sorted(_images(client, children["t_00001"].info.run_id)) == [8]  # its best, not its last


def _images(client: MlflowClient, run_id: str) -> dict[int, str]:
    """The run's heat-map pictures by step."""
    return {int(a.path.split("+step+")[1].split("+")[0]): a.path
            for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")}


def test_every_improvement_is_pictured_once_the_interval_has_passed(mlflow_server, plan, tmp_path: Path) -> None:
    sweep = tracking.SweepTracking(mlflow_server.uri, plan.sweep_id, spec_name="smoke", commit="abc123")
    cb = sweep.callback(plan)
    cb.heatmap_interval_s = 0.0
    trial = TrialRecord("t_pictured", _params(plan.space.default_point()), status="RUNNING")
    cb.on_trial_start(0, [], trial)
    _report(cb, trial, 8, 0.6, _checkpoint(tmp_path, "c1"))
    assert cb.flush()
    _report(cb, trial, 12, 0.5, _checkpoint(tmp_path, "c2"), best=0.6)  # no improvement: no picture
    _report(cb, trial, 16, 0.8, _checkpoint(tmp_path, "c3"))
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [], trial)
    assert cb.flush()
    client = MlflowClient(mlflow_server.uri)
    run = client.search_runs([sweep.experiment_id], filter_string="tags.`trial_id` = 't_pictured'")[0]
    assert sorted(_images(client, run.info.run_id)) == [8, 16]
    history = client.get_metric_history(run.info.run_id, "val_pixel_auroc")
    assert sorted((m.step, m.value) for m in history) == [(8, 0.6), (12, 0.5), (16, 0.8)]
    assert (run.info.status, run.info.run_name) == ("FINISHED", "bottle-t_pictured")


def test_dead_server_is_named(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(tracking.TrackingError, match=uri.replace(".", r"\.")):
        tracking.check_tracking_store(uri, timeout_s=3)


def test_live_server_passes_the_check(mlflow_server) -> None:
    tracking.check_tracking_store(mlflow_server.uri)


def test_local_store_refused_on_a_multi_node_cluster(tmp_path: Path) -> None:
    local = tracking.local_store_uri(tmp_path)
    assert local.startswith("sqlite:///") and tracking.is_local_store(local)
    tracking.check_store_for_cluster(local, alive_nodes=1)
    with pytest.raises(tracking.TrackingError, match="2 nodes"):
        tracking.check_store_for_cluster(local, alive_nodes=2)
    with pytest.raises(tracking.TrackingError):
        tracking.check_store_for_cluster(str(tmp_path / "mlruns"), alive_nodes=3)
    tracking.check_store_for_cluster("http://mlflow:5000", alive_nodes=3)


def test_worker_env_carries_uri_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "svc")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    env = tracking.worker_env("http://mlflow:5000")
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "svc",
                   "MLFLOW_TRACKING_PASSWORD": "pw"}


def test_ui_link_opens_the_runs_table() -> None:
    link = tracking.ui_hint("http://mlflow:5000/", "7")
    assert link == "http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning"
    local = tracking.ui_hint("sqlite:///tmp/mlflow.db", "7")
    assert local.endswith("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")


def test_source_tags_name_the_commit_only_when_known() -> None:
    assert tracking.source_tags("abc123")[schema.TAG_SOURCE_GIT_COMMIT] == "abc123"
    assert schema.TAG_SOURCE_GIT_COMMIT not in tracking.source_tags("unknown")  # not a git checkout
    assert tracking.source_tags("unknown")[schema.TAG_USER] == getpass.getuser()


def test_the_pruned_filter_is_the_documented_one() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "report.md").read_text()
    assert schema.PRUNED_FILTER in doc
