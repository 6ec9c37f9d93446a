"""A light stand-in for the real trainable: sleeps instead of training, reports a plausible validation curve.

Used by the sweep-at-scale simulation (``memseg bench sweep-scale``, docs/performance.md, "Sweep at
scale (simulated)") through the driver's ``trainable_factory``: everything around the trials - the
driver's Tuners, Optuna/TPE, ASHA, MLflow tracking, the status table, storage pruning, ``--resume`` -
runs as in production, while a trial costs a sleep rather than a GPU. No torch, no memseg model: a
simulated trial process imports what the real trainable module imports and nothing more.

What a simulated trial does, to look like a real one to everything that watches it:

* It reports every ``train.eval_interval`` steps, after sleeping ``step_seconds x eval_interval``,
  with the keys the real trainable reports (``val_*`` of :mod:`memseg.metrics.keys`, ``train_loss``,
  ``lr``, ``best_<selection metric>``, ``step`` and the Ray node id).
* The curve rises and saturates; its final level depends on the trial's parameters (the learning
  rate's distance from a sweet spot per optimiser, the synthetic ratio's and Perlin threshold's from
  the middle of their ranges) plus noise seeded by the trial id, so TPE has a landscape to model and
  ASHA has trials to stop.
* Each report carries a checkpoint laid out like the real one (``model.pt``, ``best_model.pt``,
  ``train_state.pt``, ``heatmaps/*.png``; a few kB) through the same ``tune.report(...,
  checkpoint=...)``, so the MLflow callback logs the heat maps and storage pruning slims it.
* A restored trial continues from its newest whole checkpoint's step (``sim_state.json``;
  :func:`sweeps.trainable.resume_checkpoint`), and a trial whose checkpoint was pruned ends the way
  it ended (:func:`sweeps.trainable.end_as_before`), as the real one.
* With an events folder set, each trial process appends JSON lines (start, every report before and
  after ``tune.report``, end) to
  ``<events>/<trial id>.jsonl`` with the wall clock: the bench's timeline of busy slots, kept by the
  trials themselves so it survives a ``kill -9`` of the driver.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import tempfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs
import ray
from ray import tune

from memseg.config import MemSegConfig
from memseg.metrics import keys
from sweeps.spec import ParamValue
from sweeps.trainable import Trainable, end_as_before, resume_checkpoint, trainable_name
from sweeps.tune_callback import NODE_KEY, tune_metrics

if TYPE_CHECKING:
    from sweeps.driver import CategoryPlan, TrainableFactory

STATE_FILE = "sim_state.json"
# Learning rates the simulated curve peaks at, per optimiser (the authors' SGD value, a common AdamW one).
SWEET_LR = {"sgd": 0.04, "adamw": 0.003}


@dataclass(frozen=True)
class SimulatedTrial:
    """What every trial of one category simulates.

    Attributes:
        steps: the step budget (``train.steps``).
        eval_interval: steps between reports (``train.eval_interval``).
        selection_metric: the ``val_*`` metric whose best-so-far Tune maximises.
        heatmaps: heat-map PNGs per checkpoint (``eval.heatmap_samples``).
        step_seconds: the sleep per simulated training step.
        checkpoint_bytes: size of each placeholder model file.
        events_dir: folder the trials append their timelines to (None: no timeline).
    """

    steps: int
    eval_interval: int
    selection_metric: str
    heatmaps: int
    step_seconds: float
    checkpoint_bytes: int = 2048
    events_dir: str | None = None

    @classmethod
    def from_config(
        cls, cfg: MemSegConfig, *, step_seconds: float, events_dir: str | None = None, checkpoint_bytes: int = 2048
    ) -> SimulatedTrial:
        return cls(steps=cfg.train.steps, eval_interval=cfg.train.eval_interval,
                   selection_metric=cfg.eval.selection_metric, heatmaps=cfg.eval.heatmap_samples,
                   step_seconds=step_seconds, checkpoint_bytes=checkpoint_bytes, events_dir=events_dir)


def simulated_factory(step_seconds: float, events_dir: str | None = None) -> TrainableFactory:
    """A ``trainable_factory`` for :func:`sweeps.driver.run_sweep` whose trials are simulated (named as the real)."""

    def factory(plan: CategoryPlan) -> Trainable:
        sim = SimulatedTrial.from_config(plan.base_config, step_seconds=step_seconds, events_dir=events_dir)
        return make_simulated_trainable(trainable_name(plan.category), sim)

    return factory


def make_simulated_trainable(name: str, sim: SimulatedTrial) -> Trainable:
    """A function trainable named ``name`` running :func:`run_simulated_trial` (closes over plain data only)."""
    fields = asdict(sim)

    def trainable(config: dict[str, ParamValue]) -> None:
        run_simulated_trial(config, SimulatedTrial(**fields))

    trainable.__name__ = trainable.__qualname__ = name
    return trainable


def final_level(params: Mapping[str, object], trial_id: str) -> float:
    """The validation score a trial saturates at: best near the sweet spots, with per-trial noise."""
    level = 0.97
    optimizer = str(params.get("optim.optimizer", "sgd"))
    lr = params.get("optim.lr")
    if isinstance(lr, int | float) and lr > 0:
        level -= 0.12 * math.log10(float(lr) / SWEET_LR.get(optimizer, 0.01)) ** 2
    for key, middle, weight in (("synthesis.synthetic_ratio", 0.5, 0.4), ("synthesis.perlin_threshold", 0.5, 0.6)):
        value = params.get(key)
        if isinstance(value, int | float):
            level -= weight * (float(value) - middle) ** 2
    level += random.Random(zlib.crc32(trial_id.encode())).gauss(0.0, 0.01)
    return min(0.999, max(0.55, level))


def curve(level: float, step: int, steps: int, trial_id: str) -> float:
    """The validation score at ``step``: rises from 0.5 towards ``level``, with small per-evaluation noise."""
    rng = random.Random(zlib.crc32(f"{trial_id}/{step}".encode()))
    rising = 1.0 - math.exp(-4.0 * step / max(1, steps))
    return min(1.0, max(0.0, 0.5 + (level - 0.5) * rising + rng.gauss(0.0, 0.004)))


def png_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain RGB PNG of one colour (what the real loop's heat-map overlays are, format-wise)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def write_checkpoint(folder: Path, sim: SimulatedTrial, state: Mapping[str, float], new_best: bool,
                     previous: Path | None) -> None:
    """The real checkpoint's layout, a few kB: model files of placeholder bytes, heat maps, the resume state."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = os.urandom(sim.checkpoint_bytes)
    (folder / "model.pt").write_bytes(blob)
    (folder / "train_state.pt").write_bytes(blob[: max(1, sim.checkpoint_bytes // 2)])
    best = folder / "best_model.pt"
    if new_best or previous is None or not (previous / "best_model.pt").is_file():
        best.write_bytes(blob)
    else:
        best.write_bytes((previous / "best_model.pt").read_bytes())
    (folder / STATE_FILE).write_text(json.dumps(state))
    heatmaps = folder / "heatmaps"
    heatmaps.mkdir(exist_ok=True)
    shade = int(255 * min(1.0, max(0.0, state.get("score", 0.5))))
    for i in range(sim.heatmaps):
        (heatmaps / f"val_{i:03d}_synthetic.png").write_bytes(png_bytes(16, 16, (shade, 64, 255 - shade)))


def whole_simulated_checkpoint(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    """The checkpoint's resume state was persisted whole (what a simulated trial reads when it resumes)."""
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{STATE_FILE}") as f:
            state = json.loads(f.read().decode())
    except (OSError, ValueError):  # missing (pyarrow raises FileNotFoundError) or cut short
        return False
    return isinstance(state, dict) and "step" in state and "best" in state


def _event(sim: SimulatedTrial, trial_id: str, kind: str, **values: object) -> None:
    if sim.events_dir is None:
        return
    line = json.dumps({"event": kind, "t": time.time(), "pid": os.getpid(), **values})
    with open(Path(sim.events_dir) / f"{trial_id}.jsonl", "a") as out:
        out.write(line + "\n")


def run_simulated_trial(config: Mapping[str, object], sim: SimulatedTrial) -> None:
    """Body of a simulated trial (runs inside the Tune worker process)."""
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    checkpoint = resume_checkpoint(whole_simulated_checkpoint)
    start_step, best = 0, -math.inf
    if checkpoint is not None:
        if end_as_before(trial_id, checkpoint):
            _event(sim, trial_id, "replay")
            return
        with checkpoint.as_directory() as restored:
            state = json.loads((Path(restored) / STATE_FILE).read_text())
        start_step, best = int(state["step"]), float(state["best"])
    _event(sim, trial_id, "start", step=start_step)
    node = ray.get_runtime_context().get_node_id()
    level = final_level(config, trial_id)
    raw_lr = config.get("optim.lr")
    lr = float(raw_lr) if isinstance(raw_lr, int | float) else 0.0
    previous: Path | None = None
    with tempfile.TemporaryDirectory(prefix="memseg-sim-") as scratch:
        step = start_step
        while step < sim.steps:
            step = min(sim.steps, step + sim.eval_interval)
            time.sleep(sim.step_seconds * sim.eval_interval)
            score = curve(level, step, sim.steps, trial_id)
            metrics = {
                keys.VAL_PREFIX + keys.IMAGE_AUROC: min(1.0, score + 0.01),
                keys.VAL_PREFIX + keys.PIXEL_AUROC: score,
                keys.VAL_PREFIX + keys.PIXEL_AUPRO: score * 0.9,
                keys.VAL_PREFIX + keys.IMAGE_F1_MAX: score * 0.95,
                keys.VAL_PREFIX + keys.PIXEL_F1_MAX: score * 0.7,
                keys.TRAIN_LOSS: 1.0 - score,
                "lr": lr,
            }
            selected = metrics[sim.selection_metric]
            new_best = selected > best
            best = max(best, selected)
            metrics[f"best_{sim.selection_metric}"] = best
            folder = Path(scratch) / f"eval_{step:06d}"
            write_checkpoint(folder, sim, {"step": step, "best": best, "score": score}, new_best, previous)
            payload: dict[str, str | float] = {**tune_metrics(step, metrics), NODE_KEY: node}
            # Before the report: a trial ASHA stops on this result is ended inside tune.report.
            _event(sim, trial_id, "report", step=step)
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            _event(sim, trial_id, "persisted", step=step)  # the checkpoint is on storage
            previous = folder
    _event(sim, trial_id, "end", step=step)
