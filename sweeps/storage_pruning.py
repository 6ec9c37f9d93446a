"""Disk hygiene of a sweep: an ended trial keeps only what is read after it.

Every evaluation of a trial reports a whole checkpoint directory (:mod:`memseg.training.checkpoint`):
``model.pt`` + ``best_model.pt`` + ``train_state.pt`` (SGD momentum) + ``heatmaps/``. With 18 M
trainable parameters that is ~240 MB whatever the image size, and two copies of it outlived the
trial for nothing (the README's demo left ~12 GB behind):

* **Storage** (Tune's ``storage_path``). A trial that ended - finished, stopped by ASHA, or failed
  after its last retry - is never resumed (the driver restores with ``resume_unfinished=True,
  resume_errored=False``). After it ends its checkpoints only serve the registry
  (``best_model.pt``, :func:`pipelines.registry.locate_checkpoint`) and the heat maps
  (``heatmaps/``, a few kB, read by the MLflow callback when the checkpoint is reported).
  :class:`PruneFinishedTrials` deletes ``model.pt`` and ``train_state.pt`` from them. A trial that
  is still running, or failed and will be retried, keeps its full checkpoint.
* **Older checkpoints of a running trial.** :class:`KeepLatestCheckpoints` empties a trial's
  checkpoint folders older than its ``storage.checkpoints_to_keep`` latest each time it persists a
  new one (:func:`retire_older_checkpoints`). Tune's ``CheckpointConfig(num_to_keep)`` would delete
  them, but it keeps its experiment snapshot in step with the deletions by forcing a full snapshot
  (every trial, the Optuna study pickled, an upload, and a wait for the previous upload) after every
  ``num_to_keep`` checkpoints of any trial; at 15 categories that was about half of what the Tune
  loops did besides waiting for events (docs/performance.md, "Sweep at scale (simulated)"). The sweep does not
  need the snapshot to name the newest checkpoint: a restarted trial continues from its newest
  whole checkpoint on storage (:func:`sweeps.trainable.resume_checkpoint`). A retired folder keeps
  ``replaced.json`` (written before anything is deleted) because Tune refuses to restore a trial
  whose snapshot names a folder that is gone; and a folder is retired only once a newer one is on
  storage, so a trial always has a whole checkpoint to continue from.
* **Local scratch.** The trial's training output (``train/``) and its copy of the checkpoint it
  resumed from (``resume_checkpoint/``) live on the node's disk, under Ray's session folder. Every
  reported checkpoint is on storage once ``tune.report`` returns, so the trainable removes them
  when ``fit`` returns or raises (:func:`remove_scratch`). A trial stopped by ASHA is ended by Ray
  while its training thread unwinds (Ray does not wait for it), so the callback removes the scratch
  again from the driver; that reaches the trials that ran on the driver's node (the laptop case).

**Crash safety.** Tune writes its experiment snapshot periodically, so after a ``kill -9`` a trial
that had ended (and been pruned) may still be RUNNING in the snapshot, and ``--resume`` starts it
again from its pruned checkpoint. Each pruned checkpoint therefore holds ``pruned.json`` (written
before anything is deleted) with the trial's end status and last result; the trainable reads it
(:func:`read_marker`) and ends the trial the way it ended, instead of failing on the missing
``train_state.pt``.

**Hooks** (Ray 2.60, ``tune/execution/tune_controller.py``, ``_process_trial_failure`` and
``stop_trial``): ``on_trial_error`` fires only when the trial will not be retried
(``trial.should_recover()`` is false); a failure that is retried fires ``on_trial_recover`` and the
checkpoint stays whole. ``on_trial_complete`` fires for a trial that finished and for one a
scheduler or stopper ended. Trial statuses at ``on_experiment_end`` cannot be trusted: when a study
is interrupted (time budget, SIGINT, an exception) Tune snapshots its running trials as RUNNING
(resumable) and only then marks them TERMINATED in memory (``tune.py``: ``runner.checkpoint`` then
``runner.cleanup``). So ``on_experiment_end`` removes local scratch only (never needed once the
trial processes are gone), and a study cut by ``budget.time_budget_s`` keeps the full checkpoints of
the trials it interrupted: ``--resume`` continues them.

**Filesystems.** Storage is reached through the trial's own pyarrow filesystem (the one Tune
persisted the checkpoints with), so local, NFS and bucket (``s3://``, ``gs://``) storage paths work
alike. Scratch removal is local to a node by nature.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

import pyarrow.fs
from ray.tune import Callback, Checkpoint
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.tune_callback import NODE_KEY

logger = logging.getLogger(__name__)

MARKER = "pruned.json"
REPLACED = "replaced.json"  # what a checkpoint folder keeps once a newer one replaced it
TRAIN_SCRATCH = "train"  # fit()'s train.output_dir inside the trial's working folder
RESUME_SCRATCH = "resume_checkpoint"  # local copy of the checkpoint a retried/resumed trial starts from
FALLBACK_ROOT = "memseg-trials"  # under the temp dir when RAY_CHDIR_TO_TRIAL_DIR=0


EndStatus = Literal["TERMINATED", "ERROR"]


class EndRecord(TypedDict):
    """What ``pruned.json`` holds: how the trial ended and what it reported last."""

    status: EndStatus
    trial_id: str
    result: dict[str, object]  # the trial's last reported metrics (plus its Ray node id)
    error: NotRequired[str]  # the last line of the traceback, for a trial that failed


def prunable_files() -> tuple[str, ...]:
    """Files of a checkpoint directory that only a resumed trial reads."""
    from memseg.training.checkpoint import MODEL_FILE, TRAIN_STATE_FILE  # noqa: PLC0415 - keeps torch out of the driver

    return (MODEL_FILE, TRAIN_STATE_FILE)


# --- local scratch ---------------------------------------------------------------------------------


def fallback_work_dir(trial_id: str) -> Path:
    """The trial's scratch folder when Ray does not move the trial into a working folder of its own."""
    return Path(tempfile.gettempdir()).resolve() / FALLBACK_ROOT / trial_id


def remove_scratch(work: Path) -> int:
    """Delete what a trial wrote into its local folder ``work``; returns the bytes freed.

    Only the folders the trainable creates are removed; ``work`` itself goes too when it is the
    trainable's own fallback folder (a Ray working folder belongs to Ray).
    """
    work = Path(work)
    freed = 0
    for name in (TRAIN_SCRATCH, RESUME_SCRATCH):
        folder = work / name
        if folder.is_dir():
            freed += _tree_size(folder)
            shutil.rmtree(folder, ignore_errors=True)
    if work.parent.name == FALLBACK_ROOT:
        try:
            work.rmdir()
        except OSError:
            pass  # not empty or already gone
    return freed


def _tree_size(folder: Path) -> int:
    """Bytes of the distinct files under ``folder`` (the loop hard-links best_model.pt)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def driver_scratch_dirs(trial: Trial) -> list[Path]:
    """Where ``trial`` kept its scratch if it ran on this (the driver's) node."""
    out = [fallback_work_dir(trial.trial_id)]
    # A trial that never started has no storage context or folder name, and wrote nothing.
    if trial.storage is not None and trial.storage.trial_dir_name is not None:
        out.append(Path(trial.storage.trial_working_directory))
    return out


# --- storage ---------------------------------------------------------------------------------------


def _exists(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def checkpoint_dirs(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> list[str]:
    """The ``checkpoint_NNNNNN`` folders of a trial's storage folder, oldest first."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_fs_path, allow_not_found=True))
    return sorted(
        i.path for i in infos
        if i.type == pyarrow.fs.FileType.Directory and i.path.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")
    )


def checkpoint_index(path: str) -> int:
    """The number of a ``checkpoint_NNNNNN`` folder."""
    return int(path.rstrip("/").rsplit("_", 1)[-1])


def retire_older_checkpoints(fs: pyarrow.fs.FileSystem, newest: str, keep: int) -> int:
    """Empty the checkpoint folders beside ``newest`` (a persisted one) older than the ``keep`` latest.

    A retired folder keeps only ``replaced.json`` (written before anything is deleted), so it still
    exists for Tune: Tune refuses to restore a trial whose snapshot names a checkpoint folder that is
    gone, while the trainable skips a retired one for the newest whole folder. Folders numbered above
    ``newest`` (the trial may be writing its next one) are never touched. One listing of the trial's
    folder per call. Returns how many folders were retired.
    """
    floor = checkpoint_index(newest) - keep
    trial_path = posixpath.dirname(newest.rstrip("/"))
    entries: dict[str, list[pyarrow.fs.FileInfo]] = {}  # checkpoint folder -> what is directly inside it
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_path, recursive=True, allow_not_found=True)):
        parts = info.path[len(trial_path):].strip("/").split("/")
        if len(parts) == 2 and parts[0].startswith("checkpoint_"):
            entries.setdefault(f"{trial_path}/{parts[0]}", []).append(info)
    retired = 0
    for folder, inside in entries.items():
        names = [posixpath.basename(i.path) for i in inside]
        if checkpoint_index(folder) > floor or names == [REPLACED]:
            continue
        if REPLACED not in names:
            with fs.open_output_stream(f"{folder}/{REPLACED}") as out:
                out.write(json.dumps({"replaced_by": posixpath.basename(newest.rstrip("/"))}).encode())
        for info in inside:
            if posixpath.basename(info.path) == REPLACED:
                continue
            if info.type == pyarrow.fs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
        retired += 1
    return retired


def prune_checkpoint(fs: pyarrow.fs.FileSystem, path: str, record: EndRecord) -> int:
    """Delete ``model.pt`` and ``train_state.pt`` of one persisted checkpoint; returns the bytes freed.

    ``record`` (the trial's end status and last result) goes to ``pruned.json`` first, so a
    checkpoint with files missing is always recognisable as pruned. A checkpoint without either
    file is left alone (already pruned, or not a memseg checkpoint).

    Args:
        fs: the storage filesystem.
        path: the checkpoint folder on ``fs``.
        record: what ``pruned.json`` gets (:func:`end_record`).
    """
    path = path.rstrip("/")
    infos = fs.get_file_info([f"{path}/{name}" for name in prunable_files()])
    present = [i for i in infos if i.type == pyarrow.fs.FileType.File]
    if not present:
        return 0
    with fs.open_output_stream(f"{path}/{MARKER}") as out:
        out.write(json.dumps(record, indent=2, default=str).encode())
    for info in present:
        fs.delete_file(info.path)
    return sum(i.size or 0 for i in present)


def read_marker(fs: pyarrow.fs.FileSystem, checkpoint_path: str) -> EndRecord | None:
    """The ``pruned.json`` record of a checkpoint, or None when the checkpoint is whole."""
    path = f"{checkpoint_path.rstrip('/')}/{MARKER}"
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        record: EndRecord = json.loads(f.read().decode())  # written by prune_checkpoint
    return record


def final_result(result: Mapping[str, object], keep: tuple[str, ...] = ()) -> dict[str, object]:
    """What the trial itself reported last: numbers (plus ``keep`` keys), without Tune's bookkeeping."""
    def reported(key: str, value: object) -> bool:
        return key not in AUTO_RESULT_KEYS and isinstance(value, int | float) and not isinstance(value, bool)

    return {key: value for key, value in result.items() if key in keep or reported(key, value)}


def end_record(trial: Trial, status: EndStatus) -> EndRecord:
    """The ``pruned.json`` content of an ended trial."""
    record: EndRecord = {
        "status": status,
        "trial_id": trial.trial_id,
        "result": final_result(trial.last_result or {}, keep=(NODE_KEY,)),
    }
    if status == "ERROR":
        record["error"] = _last_error_line(trial)
    return record


def _last_error_line(trial: Trial) -> str:
    """The last line of the trial's latest traceback (``error.txt`` on the driver, written before the hook)."""
    text = ""
    local = trial.error_file  # trial.get_error() reads storage, which syncs later
    if local and os.path.isfile(local):
        with open(local, errors="replace") as f:
            text = f.read()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:1000] if lines else "error"


def prune_trial(trial: Trial, status: EndStatus) -> int:
    """Prune every persisted checkpoint of an ended trial and drop its scratch on this node; returns bytes freed.

    Raises:
        ValueError: the trial has no storage context (it never started, so it has no checkpoints).
    """
    if trial.storage is None:
        raise ValueError(f"trial {trial.trial_id} has no storage context")
    fs = trial.storage.storage_filesystem
    record = end_record(trial, status)
    freed = sum(prune_checkpoint(fs, path, record) for path in checkpoint_dirs(fs, trial.storage.trial_fs_path))
    for work in driver_scratch_dirs(trial):
        freed += remove_scratch(work)
    return freed


class PruneFinishedTrials(Callback):
    """Slims the checkpoints of every trial that ended for good (see the module docstring).

    Holds no state, so it pickles into Tune's experiment state and comes back on ``Tuner.restore``.
    A failure to prune is logged and never stops the study.
    """

    def _prune(self, trial: Trial, status: EndStatus) -> None:
        try:
            freed = prune_trial(trial, status)
        except Exception as exc:  # disk hygiene must not end a study
            logger.warning("trial %s: checkpoints not pruned (%s: %s)", trial.trial_id, type(exc).__name__, exc)
            return
        if freed:
            logger.debug("trial %s (%s): %.1f MB of checkpoints/scratch freed", trial.trial_id, status, freed / 2**20)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._prune(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        # Only after the last retry: a retried failure fires on_trial_recover instead.
        self._prune(trial, "ERROR")

    def on_experiment_end(self, trials: list[Trial], **info: object) -> None:
        # Scratch only: an interrupted trial shows TERMINATED here but is RUNNING in the snapshot.
        freed = 0
        for trial in trials:
            for work in driver_scratch_dirs(trial):
                try:
                    freed += remove_scratch(work)
                except OSError as exc:
                    logger.warning("trial %s: could not remove %s (%s)", trial.trial_id, work, exc)
        if freed:
            logger.debug("freed %.1f MB of trial scratch at the end of the study", freed / 2**20)


class KeepLatestCheckpoints(Callback):
    """Keeps a running trial's ``keep`` latest checkpoints on storage (see the module docstring).

    Holds only ``keep``, so it pickles into Tune's experiment state and comes back on ``Tuner.restore``.
    A failure to retire is logged and never stops the study.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Checkpoint, **info: object
    ) -> None:
        try:
            retire_older_checkpoints(checkpoint.filesystem, checkpoint.path, self.keep)
        except Exception as exc:  # disk hygiene must not end a study
            logger.warning("trial %s: older checkpoints not retired (%s: %s)", trial.trial_id, type(exc).__name__, exc)
