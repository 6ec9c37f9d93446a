"""A (re)started trial continues from its newest whole checkpoint on storage, not only from Tune's choice.

After a ``kill -9`` of the driver, Tune's experiment snapshot can predate a trial's last persisted
checkpoints. The file-level tests check the choice on a real local pyarrow filesystem (checkpoints
cut short are skipped, pruned ones are taken); the Tune test runs a real local Ray Tune study whose
trial leaves checkpoints on storage that Tune never recorded, then fails, and checks that the retry
continues from the newest whole one and writes its next checkpoint after all of them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest
import torch

from memseg.training.checkpoint import BEST_MODEL_FILE, MODEL_FILE, TRAIN_STATE_FILE
from sweeps import storage_pruning as sp
from sweeps.simulated_trial import STATE_FILE, whole_simulated_checkpoint
from sweeps.storage_pruning import checkpoint_index
from sweeps.trainable import newest_checkpoint, whole_memseg_checkpoint

LOCAL = pyarrow.fs.LocalFileSystem()


def _state(folder: Path, step: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "best": 0.5}))
    return str(folder)


def _cut(folder: Path) -> str:
    """A checkpoint whose copy a crash cut short: the resume state is half written."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text('{"step": 3, "be')
    return str(folder)


def _newest(trial: Path, given: str | None) -> str | None:
    return newest_checkpoint(LOCAL, sp.checkpoint_dirs(LOCAL, str(trial)), given, whole_simulated_checkpoint)


def test_newest_whole_checkpoint_wins_over_tunes_older_choice(tmp_path: Path) -> None:
    first, second = _state(tmp_path / "checkpoint_000000", 1), _state(tmp_path / "checkpoint_000001", 2)
    _cut(tmp_path / "checkpoint_000002")
    # Tune knows none, or the first: the second (newest whole) is taken, the cut one skipped.
    assert _newest(tmp_path, None) == second
    assert _newest(tmp_path, first) == second
    # Tune's snapshot names a folder deleted since (only newer ones are kept): the newest whole one.
    Path(first, STATE_FILE).unlink()
    Path(first).rmdir()
    assert _newest(tmp_path, first) == second
    # Tune's choice is the newest whole one already: kept.
    assert _newest(tmp_path, second) == second


def test_nothing_newer_on_storage_keeps_tunes_choice(tmp_path: Path) -> None:
    assert _newest(tmp_path / "absent", None) is None
    only_cut = _cut(tmp_path / "t" / "checkpoint_000000")
    assert _newest(tmp_path / "t", None) is None
    given = _state(tmp_path / "u" / "checkpoint_000004", 5)
    _cut(tmp_path / "u" / "checkpoint_000005")
    assert _newest(tmp_path / "u", given) == given
    assert checkpoint_index(only_cut) == 0 and checkpoint_index(given + "/") == 4


def test_a_pruned_checkpoint_counts_as_usable(tmp_path: Path) -> None:
    """A trial that ended after Tune's last snapshot: its pruned checkpoint replays the end."""
    _state(tmp_path / "checkpoint_000000", 1)
    pruned = tmp_path / "checkpoint_000001"
    pruned.mkdir()
    (pruned / sp.MARKER).write_text(json.dumps({"status": "TERMINATED", "trial_id": "t", "result": {}}))
    assert _newest(tmp_path, None) == str(pruned)


def test_memseg_checkpoint_is_whole_only_with_every_model_file_complete(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint_000000"
    folder.mkdir()
    for name in (MODEL_FILE, BEST_MODEL_FILE, TRAIN_STATE_FILE):
        torch.save({"step": 3, "weights": torch.zeros(64)}, folder / name)
    assert whole_memseg_checkpoint(LOCAL, str(folder))

    data = (folder / TRAIN_STATE_FILE).read_bytes()
    (folder / TRAIN_STATE_FILE).write_bytes(data[: len(data) // 2])  # the copy was cut by a crash
    assert not whole_memseg_checkpoint(LOCAL, str(folder))
    (folder / TRAIN_STATE_FILE).write_bytes(data)
    (folder / BEST_MODEL_FILE).unlink()
    assert not whole_memseg_checkpoint(LOCAL, str(folder))


# --- a real Tune study -----------------------------------------------------------------------------

STEPS = 4


def _write_state(folder: Path, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "best": float(step)}))


def crashing_trial(config: dict[str, Any]) -> None:
    """On its first attempt leaves checkpoints on storage that Tune did not record, then fails.

    ``recorded``: reports step 1 (Tune records ``checkpoint_000000``), then step 2 lands on storage
    unrecorded (``checkpoint_000001``), which retires ``checkpoint_000000`` as the sweep's
    ``KeepLatestCheckpoints`` does, and step 3's copy is cut (``checkpoint_000002``). Tune restores the
    retry with the retired folder.
    ``unrecorded``: step 1 lands on storage unrecorded (``checkpoint_000000``); Tune knows no checkpoint.
    The retry reports every step it trains: it must start after the newest whole checkpoint.
    """
    from ray import tune

    from sweeps.trainable import resume_checkpoint

    checkpoint = resume_checkpoint(whole_simulated_checkpoint)
    start = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / STATE_FILE).read_text())["step"]
    storage = tune.get_context().get_storage()
    trial = Path(storage.trial_fs_path)
    scratch = Path.cwd() / "scratch"
    if start == 0:
        if config["kind"] == "recorded":
            _write_state(scratch / "1", 1)
            tune.report({"step": 1, "start": start}, checkpoint=tune.Checkpoint.from_directory(str(scratch / "1")))
            _write_state(trial / "checkpoint_000001", 2)
            sp.retire_older_checkpoints(storage.storage_filesystem, str(trial / "checkpoint_000001"), keep=1)
            _cut(trial / "checkpoint_000002")
        else:
            _write_state(trial / "checkpoint_000000", 1)
        raise RuntimeError("the driver was killed")
    for step in range(start + 1, STEPS + 1):
        _write_state(scratch / str(step), step)
        tune.report({"step": step, "start": start}, checkpoint=tune.Checkpoint.from_directory(str(scratch / str(step))))


@pytest.fixture(scope="module")
def local_ray() -> Any:
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_retried_trial_continues_from_checkpoints_tune_did_not_record(local_ray: Any, tmp_path: Path) -> None:
    from ray import tune

    grid = tune.Tuner(
        crashing_trial,
        param_space={"kind": tune.grid_search(["recorded", "unrecorded"])},
        tune_config=tune.TuneConfig(metric="step", mode="max", trial_dirname_creator=lambda t: f"t_{t.trial_id}"),
        run_config=tune.RunConfig(name="resume", storage_path=str(tmp_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    results = {r.config["kind"]: r for r in grid}

    recorded = results["recorded"]
    assert recorded.error is None
    steps = [row["step"] for row in recorded.metrics_dataframe.to_dict("records")]
    assert steps == [1, 3, 4]  # step 2 was on storage: not trained again
    assert recorded.metrics["start"] == 2
    folders = sp.checkpoint_dirs(LOCAL, recorded.path)
    # The retry wrote after every folder already there: the cut one is left as it was, none overwritten.
    assert [checkpoint_index(f) for f in folders] == [0, 1, 2, 3, 4]
    assert os.listdir(folders[0]) == [sp.REPLACED]  # the folder Tune restored the retry with
    assert [json.loads(Path(f, STATE_FILE).read_text())["step"] for f in (folders[1], *folders[3:])] == [2, 3, 4]
    assert Path(recorded.checkpoint.path).name == "checkpoint_000004"

    unrecorded = results["unrecorded"]
    assert unrecorded.error is None
    assert [row["step"] for row in unrecorded.metrics_dataframe.to_dict("records")] == [2, 3, 4]
    assert [checkpoint_index(f) for f in sp.checkpoint_dirs(LOCAL, unrecorded.path)] == [0, 1, 2, 3]
