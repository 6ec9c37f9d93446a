"""The Tune trainable: one trial = build the config from the trial's parameters, train with memseg, report.

A plain function trainable (one trial is one process on one device, so Ray Train would add nothing).
It only trains and reports: the config is ``base.with_overrides(params)``,
``memseg.training.fit`` runs with a :class:`~sweeps.tune_callback.TuneReportCallback`, and a retried
or resumed trial continues from ``ray.tune.get_checkpoint()``. Torch gets as many threads as the
trial has CPUs. Every path in the base config is absolute before it gets here, because Tune runs the
trial with its working directory set to a per-trial folder; the trial writes its training output
there (local disk), and only the checkpoints it reports go to the storage path. That local output is
removed when ``fit`` returns or raises (:mod:`sweeps.storage_pruning`): every checkpoint in it is on
storage already, and nothing reads the rest (``metrics.json``, ``config.yaml``) - the driver's
callbacks read the reported checkpoints on storage.

A trial resumed from a checkpoint that :class:`~sweeps.storage_pruning.PruneFinishedTrials` slimmed
(it had ended, but the driver was killed before Tune's snapshot said so) ends the way it ended: it
reports its last result again, or fails again, without training.

A (re)started trial continues from the newest whole checkpoint of its own on storage, which may be
newer than the one Tune hands it (:func:`resume_checkpoint`): Tune writes its experiment snapshot
locally and uploads it in the background, so after a ``kill -9`` of the driver the snapshot can
predate the trial's last persisted checkpoints, and Tune would restart the trial from an older one
or from step 0.

Each category gets its own function object named ``memseg_<category>``: Tune registers trainables by
name per job, and the per-category Tuners run side by side in one driver, so a shared name would
let one category's trials pick up another's base config. ``Tuner.restore`` checks the name, so it
must be the same on every run of the sweep.

Tests and simulations change what a real trial does through ``make_trainable(...,
extra_callbacks=...)`` (training callbacks added to the trial's ``fit``, e.g. one that raises at a
given step) and hand the result to :func:`sweeps.driver.run_sweep` through its
``trainable_factory``; nothing of it reaches the user config or the tracked parameters.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs
import ray
from ray import tune

from memseg.config import MemSegConfig
from memseg.errors import MemSegError
from sweeps.search_space import overrides_from_params
from sweeps.spec import ParamValue
from sweeps.storage_pruning import (
    RESUME_SCRATCH,
    TRAIN_SCRATCH,
    checkpoint_dirs,
    checkpoint_index,
    fallback_work_dir,
    read_marker,
    remove_scratch,
)
from sweeps.tune_callback import NODE_KEY, TuneReportCallback

if TYPE_CHECKING:
    from memseg.training.callbacks import TrainingCallback

Trainable = Callable[[dict[str, ParamValue]], None]
"""A Tune function trainable: called in the trial's process with the trial's sampled parameters."""

CallbackFactory = Callable[[str, MemSegConfig], Sequence["TrainingCallback"]]
"""Extra training callbacks of one trial, from its trial id and the config it trains with."""

WholeCheck = Callable[[pyarrow.fs.FileSystem, str], bool]
"""Whether the checkpoint folder at a path of a storage filesystem was persisted whole (resumable)."""


class TrialEndedBeforeError(MemSegError):
    """A trial that had failed for good was started again from its pruned checkpoint (after a driver crash)."""


def trial_config(base: MemSegConfig, params: Mapping[str, object]) -> MemSegConfig:
    """The config a trial trains with: the category's base config plus the trial's field values."""
    return base.with_overrides(overrides_from_params(params))


def torch_threads(cpus: float) -> int:
    """Threads for a trial holding ``cpus`` CPUs (at least one)."""
    return max(1, int(cpus))


def trainable_name(category: str) -> str:
    return f"memseg_{category}"


def local_trial_dir(trial_id: str) -> Path:
    """Where the trial writes while it trains: on the worker's local disk, never the storage path.

    ``get_trial_dir()`` is the trial's folder on the storage path (maybe a bucket); the working
    directory Tune moved the process into is local and per trial. Only what ``tune.report`` persists
    reaches the storage.
    """
    if os.environ.get("RAY_CHDIR_TO_TRIAL_DIR", "1") != "0":
        return Path.cwd().resolve()
    return fallback_work_dir(trial_id)


def make_trainable(
    category: str, base: MemSegConfig, *, extra_callbacks: CallbackFactory | None = None
) -> Trainable:
    """The function trainable of one category (closes over the plain base config, which pickles).

    Args:
        category: names the trainable (``memseg_<category>``).
        base: the category's resolved base config; a trial adds its parameters to it.
        extra_callbacks: called in the trial's process with the trial id and the trial's config;
            the callbacks it returns run in ``fit`` after the Tune reporter. It travels to the
            workers pickled with the trainable, so it must be importable there (or registered with
            ``ray.cloudpickle.register_pickle_by_value``).
    """
    base_tree = base.model_dump()

    def trainable(config: dict[str, ParamValue]) -> None:
        run_trial(config, base_tree, extra_callbacks)

    trainable.__name__ = trainable.__qualname__ = trainable_name(category)
    return trainable


def run_trial(
    config: Mapping[str, object], base_tree: Mapping[str, object], extra_callbacks: CallbackFactory | None = None
) -> None:
    """Body of a trial (runs inside the Tune worker process)."""
    from memseg.training import fit  # noqa: PLC0415 - torch loads in the trial process, never in the driver

    ctx = tune.get_context()
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1.0)
    checkpoint = resume_checkpoint(whole_memseg_checkpoint)
    if checkpoint is not None and end_as_before(ctx.get_trial_id(), checkpoint):
        return

    work = local_trial_dir(ctx.get_trial_id())
    cfg = trial_config(MemSegConfig.model_validate(base_tree), config)
    cfg = cfg.with_overrides({"train.output_dir": str(work / TRAIN_SCRATCH)})
    callbacks: list[TrainingCallback] = [TuneReportCallback({NODE_KEY: ray.get_runtime_context().get_node_id()})]
    if extra_callbacks is not None:
        callbacks += extra_callbacks(ctx.get_trial_id(), cfg)
    try:
        resume_from = None
        if checkpoint is not None:
            # A local copy: the storage copy may be remote (bucket) and fit() reads it while it starts.
            local = work / RESUME_SCRATCH
            shutil.rmtree(local, ignore_errors=True)
            resume_from = Path(checkpoint.to_directory(str(local)))

        # Test metrics belong to the champion, measured once after the sweep, not to every trial.
        fit(
            cfg, callbacks=callbacks, resume_from=resume_from, progress=False, evaluate_test=False,
            num_threads=torch_threads(cpus),
        )
    finally:
        # Every reported checkpoint is on storage by now; the rest of the local output is read by no one.
        remove_scratch(work)


def end_as_before(trial_id: str, checkpoint: tune.Checkpoint) -> bool:
    """End a trial whose checkpoint was pruned the way it ended; False when the checkpoint is whole.

    Raises:
        TrialEndedBeforeError: the trial had failed for good (Tune counts it as a failure again).
    """
    marker = read_marker(checkpoint.filesystem, checkpoint.path)
    if marker is None:
        return False
    if marker["status"] == "ERROR":
        msg = (f"trial {trial_id} had failed before the sweep was restarted ({marker.get('error', 'error')}); "
               f"its checkpoint {checkpoint.path} was pruned, so it is not run again")
        raise TrialEndedBeforeError(msg)
    tune.report(dict(marker["result"]))
    return True


def newest_checkpoint(
    fs: pyarrow.fs.FileSystem, folders: Sequence[str], given: str | None, whole: WholeCheck
) -> str | None:
    """The checkpoint a (re)started trial continues from: its newest usable one on storage, or ``given``.

    ``folders`` are the trial's checkpoint folders on storage, oldest first (:func:`checkpoint_dirs`).
    A folder newer than ``given`` (Tune's choice; None: Tune knows none) is usable when it was pruned
    (the trial ended: :func:`end_as_before` replays the end) or is ``whole``; one cut by a crash while
    Tune copied it is skipped for the next older one.
    """
    floor = checkpoint_index(given) if given is not None else -1
    for path in reversed(folders):
        if checkpoint_index(path) <= floor:
            break
        if read_marker(fs, path) is not None or whole(fs, path):
            return path
    return given


def resume_checkpoint(whole: WholeCheck) -> tune.Checkpoint | None:
    """Inside a trial: the checkpoint to continue from (:func:`newest_checkpoint`), None for a fresh start.

    Also moves Tune's checkpoint counter past every folder on storage, so the trial's next checkpoint
    never overwrites one written before a crash (the folder order stays the time order).
    """
    given = tune.get_checkpoint()
    storage = tune.get_context().get_storage()
    fs = storage.storage_filesystem
    folders = checkpoint_dirs(fs, storage.trial_fs_path)
    if folders:
        storage.current_checkpoint_index = max(storage.current_checkpoint_index, checkpoint_index(folders[-1]))
    chosen = newest_checkpoint(fs, folders, given.path if given is not None else None, whole)
    if chosen is None or (given is not None and chosen == given.path):
        return given
    return tune.Checkpoint(chosen, filesystem=fs)


def whole_memseg_checkpoint(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    """Every model file of the checkpoint is present and a complete archive (``torch.save`` writes zip files).

    A file cut short by a crash lacks the zip's closing directory, so the check reads only the end of
    each file (a few small range reads on a bucket).
    """
    from memseg.training.checkpoint import BEST_MODEL_FILE, MODEL_FILE, TRAIN_STATE_FILE  # noqa: PLC0415 - as prunable_files

    for name in (MODEL_FILE, BEST_MODEL_FILE, TRAIN_STATE_FILE):
        file = f"{path.rstrip('/')}/{name}"
        if fs.get_file_info(file).type != pyarrow.fs.FileType.File:
            return False
        with fs.open_input_file(file) as handle:
            if not zipfile.is_zipfile(handle):
                return False
    return True
