"""Disk hygiene of a sweep: pruned checkpoints of ended trials, local scratch, resume from a pruned checkpoint.

The file-level tests run on a real local pyarrow filesystem. The Tune tests run a real (local,
in-process) Ray Tune experiment whose trainable writes checkpoints in memseg's layout (small files
with the real names) and resumes like the real trainable, with :class:`PruneFinishedTrials` as its
callback; then a snapshot is edited back to the state a ``kill -9`` can leave (an ended, pruned
trial still RUNNING) and the study is restored.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest

from memseg.training.checkpoint import BEST_MODEL_FILE, HEATMAP_DIR, MODEL_FILE, TRAIN_STATE_FILE
from sweeps import storage_pruning as sp
from sweeps.spec import load_sweep_spec

LOCAL = pyarrow.fs.LocalFileSystem()


def _checkpoint(folder: Path, step: int = 1, model_bytes: int = 3000, state_bytes: int = 2000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(b"m" * model_bytes)
    (folder / BEST_MODEL_FILE).write_bytes(b"b" * model_bytes)
    (folder / TRAIN_STATE_FILE).write_text(json.dumps({"step": step}) + " " * state_bytes)
    (folder / HEATMAP_DIR).mkdir(exist_ok=True)
    (folder / HEATMAP_DIR / "val_000_good.png").write_bytes(b"png")
    return folder


def _folder_files(trial_path: str) -> dict[str, list[str]]:
    """What each checkpoint folder of a trial holds, by folder name."""
    return {Path(c).name: sorted(os.listdir(c)) for c in sp.checkpoint_dirs(LOCAL, trial_path)}


# --- files -----------------------------------------------------------------------------------------


def test_prune_checkpoint_keeps_best_model_and_heatmaps(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "checkpoint_000001")
    expected = (ckpt / MODEL_FILE).stat().st_size + (ckpt / TRAIN_STATE_FILE).stat().st_size
    record = {"status": "TERMINATED", "trial_id": "t1", "result": {"step": 16, "best_val_pixel_auroc": 0.7}}

    assert sp.prune_checkpoint(LOCAL, str(ckpt), record) == expected
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([BEST_MODEL_FILE, HEATMAP_DIR, sp.MARKER])
    assert (ckpt / BEST_MODEL_FILE).read_bytes() == b"b" * 3000
    assert (ckpt / HEATMAP_DIR / "val_000_good.png").is_file()
    assert sp.read_marker(LOCAL, str(ckpt)) == record
    # Idempotent: nothing left to delete, the marker stays as written.
    assert sp.prune_checkpoint(LOCAL, str(ckpt), {"status": "ERROR"}) == 0
    assert sp.read_marker(LOCAL, str(ckpt)) == record


def test_older_checkpoints_are_retired_and_newer_ones_left(tmp_path: Path) -> None:
    for i in range(5):
        _checkpoint(tmp_path / f"checkpoint_{i:06d}", step=i)
    newest = str(tmp_path / "checkpoint_000003")  # 000004: the trial is writing its next one
    assert sp.retire_older_checkpoints(LOCAL, newest, keep=2) == 2

    whole = sorted([BEST_MODEL_FILE, HEATMAP_DIR, MODEL_FILE, TRAIN_STATE_FILE])
    # The folders stay (Tune checks that the one its snapshot names exists), emptied but for the marker.
    assert _folder_files(str(tmp_path)) == {"checkpoint_000000": [sp.REPLACED], "checkpoint_000001": [sp.REPLACED],
                          "checkpoint_000002": whole, "checkpoint_000003": whole, "checkpoint_000004": whole}
    assert json.loads((tmp_path / "checkpoint_000000" / sp.REPLACED).read_text()) == {
        "replaced_by": "checkpoint_000003"}
    assert sp.retire_older_checkpoints(LOCAL, newest + "/", keep=1) == 1
    assert sp.retire_older_checkpoints(LOCAL, newest, keep=1) == 0  # nothing left to retire
    assert [names == whole for names in _folder_files(str(tmp_path)).values()] == [False, False, False, True, True]
    # A retired folder is neither pruned nor read as a pruned trial's end.
    assert sp.prune_checkpoint(LOCAL, str(tmp_path / "checkpoint_000000"), {"status": "TERMINATED"}) == 0
    assert sp.read_marker(LOCAL, str(tmp_path / "checkpoint_000000")) is None


def test_whole_or_foreign_checkpoints_are_left_alone(tmp_path: Path) -> None:
    whole = _checkpoint(tmp_path / "checkpoint_000000")
    assert sp.read_marker(LOCAL, str(whole)) is None
    foreign = tmp_path / "checkpoint_000001"
    foreign.mkdir()
    (foreign / "weights.bin").write_bytes(b"x")
    assert sp.prune_checkpoint(LOCAL, str(foreign), {"status": "TERMINATED"}) == 0
    assert [p.name for p in foreign.iterdir()] == ["weights.bin"]  # no marker either


def test_checkpoint_dirs_lists_only_checkpoint_folders(tmp_path: Path) -> None:
    trial = tmp_path / "memseg_bottle_abc"
    for name in ("checkpoint_000002", "checkpoint_000000", "heatmaps"):
        (trial / name).mkdir(parents=True)
    (trial / "checkpoint_000009.tmp").write_text("a file, not a folder")
    (trial / "result.json").write_text("{}")
    assert [Path(p).name for p in sp.checkpoint_dirs(LOCAL, str(trial))] == ["checkpoint_000000", "checkpoint_000002"]
    assert sp.checkpoint_dirs(LOCAL, str(tmp_path / "missing")) == []


def test_remove_scratch_in_a_ray_working_dir(tmp_path: Path) -> None:
    work = tmp_path / "working_dirs" / "memseg_bottle_abc"
    latest = _checkpoint(work / sp.TRAIN_SCRATCH / "checkpoints" / "latest", model_bytes=5000, state_bytes=1000)
    os.link(latest / BEST_MODEL_FILE, work / sp.TRAIN_SCRATCH / BEST_MODEL_FILE)  # as fit() does
    (work / sp.TRAIN_SCRATCH / "metrics.json").write_text("{}")
    _checkpoint(work / sp.RESUME_SCRATCH, model_bytes=100, state_bytes=0)
    (work / "stdout.log").write_text("not ours")

    freed = sp.remove_scratch(work)
    assert freed > 2 * 5000 + 1000 + 2 * 100  # every distinct file of both folders
    assert freed < 3 * 5000 + 1000 + 2 * 100 + 1000  # the hard link counted once
    assert sorted(p.name for p in work.iterdir()) == ["stdout.log"]  # Ray's folder stays
    assert sp.remove_scratch(work) == 0


def test_remove_scratch_drops_the_fallback_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    work = sp.fallback_work_dir("abc123")
    assert work == tmp_path.resolve() / sp.FALLBACK_ROOT / "abc123"
    _checkpoint(work / sp.TRAIN_SCRATCH)
    sp.remove_scratch(work)
    assert not work.exists()


def test_final_result_drops_tune_bookkeeping() -> None:
    result = {"step": 16, "best_val_pixel_auroc": 0.7, "val_loss": float("nan"), "ray_node_id": "n1",
              "training_iteration": 2, "time_total_s": 3.0, "pid": 7, "date": "x", "done": True,
              "trial_id": "abc", "config": {"a": 1}, "checkpoint_dir_name": "checkpoint_000001"}
    out = sp.final_result(result, keep=("ray_node_id",))
    assert set(out) == {"step", "best_val_pixel_auroc", "val_loss", "ray_node_id"}


def test_prune_switch_defaults_on_and_is_saved_with_the_study(synthetic_root: Path, tmp_path: Path) -> None:
    from ray import cloudpickle

    from sweeps import driver

    spec = load_sweep_spec("smoke").with_changes({"data.root": str(synthetic_root), "storage.path": str(tmp_path)})
    assert spec.storage.prune_finished is True

    def saved_callbacks(s: Any, sweep_id: str) -> list[str]:
        # tuner.pkl holds the RunConfig that Tuner.restore brings back after a crash.
        plan = driver.plan_sweep(s, sweep_id, ["bottle"])[0]
        driver.build_tuner(plan, s, [])
        state = cloudpickle.loads((Path(plan.experiment_path) / "tuner.pkl").read_bytes())
        return [type(c).__name__ for c in state["_run_config"].callbacks]

    assert "PruneFinishedTrials" in saved_callbacks(spec, "on")
    assert "PruneFinishedTrials" not in saved_callbacks(spec.with_changes({"storage.prune_finished": False}), "off")


# --- a real Tune study -----------------------------------------------------------------------------

STEPS = 3


def fake_trial(config: dict[str, Any]) -> None:
    """Trains like the real trainable, in memseg's checkpoint layout, without a model.

    ``kind``: ``ok`` runs to the end, ``stopped`` is ended by the run's stopper at step 1,
    ``flaky`` fails once after its step-1 checkpoint (the retry must find that checkpoint whole),
    ``broken`` fails at step 2 on every attempt (ERROR after its retry).
    """
    from ray import tune

    from sweeps.trainable import end_as_before

    ctx = tune.get_context()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and end_as_before(ctx.get_trial_id(), checkpoint):
        return
    start = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            missing = [n for n in (MODEL_FILE, TRAIN_STATE_FILE) if not (Path(folder) / n).is_file()]
            if missing:
                raise RuntimeError(f"resumed from a checkpoint without {missing}")
            start = json.loads((Path(folder) / TRAIN_STATE_FILE).read_text())["step"]
    out = Path.cwd() / sp.TRAIN_SCRATCH  # like train.output_dir in the trial's working folder
    kind = KIND_OF[config["q"]]
    for step in range(start + 1, STEPS + 1):
        if kind == "broken" and step == 2:
            raise RuntimeError("broken trial")
        if kind == "flaky" and step == 2 and start == 0:
            raise RuntimeError("flaky trial")
        latest = _checkpoint(out / "checkpoints" / "latest", step=step)
        tune.report({"step": step, "score": step * config["q"], "q": config["q"]},
                    checkpoint=tune.Checkpoint.from_directory(str(latest)))


def _stop(trial_id: str, result: dict[str, Any]) -> bool:
    return KIND_OF[result["q"]] == "stopped" and result["step"] >= 1


KINDS = {"ok": 1.0, "stopped": 2.0, "flaky": 3.0, "broken": 4.0}
KIND_OF = {q: kind for kind, q in KINDS.items()}


@pytest.fixture(scope="module")
def local_ray() -> Any:
    import sys

    import ray
    from ray import cloudpickle

    # The trial functions of this test module travel by value (workers need not import tests/).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _fit(storage: Path, name: str) -> Any:
    from ray import tune

    tuner = tune.Tuner(
        fake_trial,
        param_space={"q": tune.grid_search(list(KINDS.values()))},
        tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=2,
                                    trial_dirname_creator=lambda t: f"t_{t.trial_id}"),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), stop=_stop, verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            # As the driver: old checkpoints are retired by our callback, not Tune's num_to_keep.
            callbacks=[sp.KeepLatestCheckpoints(1), sp.PruneFinishedTrials()],
        ),
    )
    return tuner.fit()


def _by_kind(grid: Any) -> dict[str, Any]:
    return {KIND_OF[r.config["q"]]: r for r in grid}


def _checkpoint_files(result: Any) -> dict[str, list[str]]:
    return _folder_files(result.path)


@pytest.mark.ray
def test_tune_study_prunes_ended_trials_only(local_ray: Any, tmp_path: Path) -> None:
    grid = _fit(tmp_path, "study")
    results = _by_kind(grid)

    pruned = sorted([BEST_MODEL_FILE, HEATMAP_DIR, sp.MARKER])
    # Checkpoints reported per trial: every one but the last retired (KeepLatestCheckpoints(1)).
    for kind, status, step, reported in (("ok", "TERMINATED", STEPS, 3), ("stopped", "TERMINATED", 1, 1),
                                         ("flaky", "TERMINATED", STEPS, 3), ("broken", "ERROR", 1, 1)):
        r = results[kind]
        files = _checkpoint_files(r)
        assert list(files.values()) == [[sp.REPLACED]] * (reported - 1) + [pruned], (kind, files)
        marker = sp.read_marker(LOCAL, sp.checkpoint_dirs(LOCAL, r.path)[-1])
        assert marker["status"] == status, kind
        assert marker["result"]["step"] == step == r.metrics["step"], kind
    # The flaky trial resumed from a whole checkpoint (the trainable raises otherwise) and finished.
    assert results["flaky"].error is None
    assert "broken trial" in str(results["broken"].error)
    assert "broken trial" in sp.read_marker(LOCAL, results["broken"].checkpoint.path)["error"]

    # No trial left scratch in its working folder on this (the driver's) node.
    session = local_ray._private.worker._global_node.get_session_dir_path()
    working = glob.glob(f"{session}/artifacts/*/study/working_dirs/*")
    assert len(working) == len(KINDS)
    assert not [w for w in working if Path(w, sp.TRAIN_SCRATCH).exists()]


def _pretend_still_running(experiment: Path, trial_ids: set[str]) -> None:
    """Rewrite the latest snapshot as a kill -9 can leave it: these trials RUNNING, their ends unrecorded."""
    path = sorted(experiment.glob("experiment_state-*.json"))[-1]
    state = json.loads(path.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] in trial_ids:
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
    path.write_text(json.dumps(state))


@pytest.mark.ray
def test_restored_study_ends_pruned_trials_as_they_ended(local_ray: Any, tmp_path: Path) -> None:
    from ray import tune

    first = _by_kind(_fit(tmp_path, "crashed"))
    ids = {first[k].metrics["trial_id"] for k in ("ok", "broken")}
    _pretend_still_running(tmp_path / "crashed", ids)
    lines_before = len(Path(first["ok"].path, "result.json").read_text().splitlines())

    grid = tune.Tuner.restore(str(tmp_path / "crashed"), trainable=fake_trial, resume_unfinished=True,
                              resume_errored=False).fit()
    again = _by_kind(grid)
    ok = again["ok"]
    assert ok.error is None and ok.metrics["step"] == STEPS and ok.metrics["score"] == STEPS * KINDS["ok"]
    # One more result (the last one, reported again), no training: no new checkpoint.
    assert len(Path(ok.path, "result.json").read_text().splitlines()) == lines_before + 1
    assert list(_checkpoint_files(ok)) == list(_checkpoint_files(first["ok"]))
    broken = again["broken"]
    assert broken.error is not None and "had failed before the sweep was restarted" in str(broken.error)
    assert "broken trial" in str(broken.error)
