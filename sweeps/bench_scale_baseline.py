"""The bare-Tune driver of the sweep-at-scale simulation: ``python -m sweeps.bench_scale_baseline``.

One ``ray.tune.Tuner`` over every category's simulated trials (the category a grid axis, Tune's
random search over the learning rate and synthesis ranges the simulated curve responds to, Tune's
own ASHA with the rungs our sweep uses, the same per-trial resources and concurrency) on the
cluster at ``RAY_ADDRESS``. No Optuna, no MLflow, no status table, no storage pruning, and none of
their imports: it is what Tune costs by itself, the baseline our stack is compared with
(``memseg bench sweep-scale``, :mod:`pipelines.bench_sweep_scale`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from memseg.metrics.keys import STEP
from sweeps.simulated_trial import SimulatedTrial, make_simulated_trainable

TRAINABLE = "memseg_baseline"


@dataclass(frozen=True)
class BaselineSettings:
    """What the bare Tuner runs (written as JSON by the bench, read back by this driver)."""

    sim: SimulatedTrial
    categories: list[str]
    trials: int
    max_concurrent: int
    grace_period: int
    reduction_factor: float
    storage: str
    reuse_actors: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BaselineSettings:
        doc = json.loads(text)
        return cls(**{**doc, "sim": SimulatedTrial(**doc["sim"])})


def run_baseline(settings: BaselineSettings) -> dict[str, int]:
    """Run the bare Tuner to its end; trials per outcome (finished, pruned, failed)."""
    sim = settings.sim
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # as our driver: Tune's own tables off
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level=logging.WARNING)
    metric = f"best_{sim.selection_metric}"
    space = {
        "category": tune.grid_search(settings.categories),
        "optim.optimizer": tune.choice(["sgd", "adamw"]),
        "optim.lr": tune.loguniform(1e-3, 8e-2),
        "synthesis.synthetic_ratio": tune.uniform(0.3, 0.7),
        "synthesis.perlin_threshold": tune.uniform(0.4, 0.6),
    }
    tuner = tune.Tuner(
        tune.with_resources(make_simulated_trainable(TRAINABLE, sim), {"cpu": 1, "gpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=settings.trials,
            max_concurrent_trials=settings.max_concurrent,
            reuse_actors=settings.reuse_actors,
            scheduler=ASHAScheduler(time_attr=STEP, metric=metric, mode="max", max_t=sim.steps,
                                    grace_period=settings.grace_period, reduction_factor=settings.reduction_factor),
        ),
        run_config=tune.RunConfig(name="baseline", storage_path=settings.storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    grid = tuner.fit()
    counts: dict[str, int] = {}
    for i in range(len(grid)):  # ResultGrid is indexable, not iterable
        r = grid[i]
        step = (r.metrics or {}).get(STEP)
        outcome = "failed" if r.error else ("finished" if step is not None and step >= sim.steps else "pruned")
        counts[f"trials_{outcome}"] = counts.get(f"trials_{outcome}", 0) + 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.bench_scale_baseline", description=__doc__)
    parser.add_argument("--settings", required=True, help="BaselineSettings as JSON")
    parser.add_argument("--out", required=True, help="where the trial counts go (JSON)")
    args = parser.parse_args(argv)
    counts = run_baseline(BaselineSettings.from_json(Path(args.settings).read_text()))
    Path(args.out).write_text(json.dumps({"counts": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
