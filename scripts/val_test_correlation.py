"""How well does each validation source predict the test? Spearman rho over a small set of trials.

For each category, every trial (a set of config overrides) is trained ONCE. At each evaluation the
checkpoint is scored on both validation sets (``data.val_anomaly_source`` = ``training_synthesis``
and ``held_out``, the same held-out images, the same ``eval.val_seed``) and on the test split.
Training once serves both sources exactly: the validation set never feeds back into training (it
is drawn from its own fixed-seed generator, after nothing that training consumes), so two runs that
differ only in the source train the same weights. Each source then picks its best checkpoint with
the trainer's own rule (the first evaluation with the highest selection metric), and the trial's
figures under that source are the selection metric of that checkpoint and its test metrics. Test
figures are only reported here, never used to choose.

Output: ``OUT/<category>/<trial>.json`` per trial (a rerun skips finished trials), and
``OUT/summary.json`` + ``OUT/summary.md`` with rho per category x source x (validation metric, test
metric) and the test regret of the validation choice.

    python scripts/val_test_correlation.py --root data/synthetic --categories carpet bottle --out runs/valcorr

Rerun it on another dataset (e.g. a realistic benchmark) with ``--root``/``--categories``; the trial
list can be replaced with ``--trials FILE.yaml`` (a mapping: trial name -> {dotted key: value}).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from memseg.config import MemSegConfig, parse_overrides
from memseg.data.datasets import EvalSet, build_validation_set, category_splits, load_test_set
from memseg.evaluation import evaluate_model
from memseg.inference import load_checkpoint
from memseg.metrics import keys
from memseg.metrics.rank_correlation import val_test_rank_correlation
from memseg.training import fit
from memseg.training.loop import prepare_config

SOURCES = ("training_synthesis", "held_out")
METRICS = (keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO)
# The learning test's CPU budget (tests/integration/test_learning.py), 200 steps.
BASE = {
    "data.image_size": 128,
    "data.texture_source": "procedural",  # no DTD download (--set data.texture_source=dtd --set data.dtd_root=DIR)
    "data.val_min_images": 6,
    "data.val_anomalies_per_image": 2,
    "model.backbone_weights": "none",
    "model.memory_size": 10,
    "train.device": "cpu",
    "train.steps": 200,
    "train.batch_size": 8,
    "train.eval_interval": 50,
    "train.log_interval": 10,
    "train.seed": 42,
    "eval.heatmap_samples": 0,
}
# Six trials that move what a sweep moves: learning rate and optimiser, loss balance, synthesis.
TRIALS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "lr_0.01": {"optim.lr": 0.01},
    "lr_0.12": {"optim.lr": 0.12},
    "focal_heavy": {"loss.l1_weight": 0.2, "loss.focal_weight": 0.8, "loss.focal_gamma": 2.0},
    "structure_opaque": {"synthesis.texture_probability": 0.1, "synthesis.transparency_min": 0.6},
    "adamw_sparse_masks": {"optim.optimizer": "adamw", "optim.lr": 0.001, "synthesis.perlin_threshold": 0.7},
}


class _Recorder:
    """Scores every evaluation's checkpoint on both validation sets and the test split."""

    def __init__(self, sets: Mapping[str, EvalSet], cfg: MemSegConfig) -> None:
        self.sets = sets
        self.cfg = cfg
        self.rows: list[dict[str, float]] = []

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        model, _ = load_checkpoint(checkpoint_dir / "model.pt", "cpu")
        row: dict[str, float] = {keys.STEP: float(step), keys.TRAIN_LOSS: float(metrics.get(keys.TRAIN_LOSS, math.nan))}
        with torch.no_grad():
            for name, data in self.sets.items():
                figures, _ = evaluate_model(model, data.images, data.masks, data.labels, None, self.cfg.eval, "cpu")
                row.update({f"{name}/{k}": float(figures[k]) for k in METRICS})
        self.rows.append(row)


def run_trial(base: MemSegConfig, overrides: Mapping[str, Any], out_dir: Path, threads: int) -> dict[str, Any]:
    """Train one trial, recording both validation sources and the test at every evaluation."""
    cfg = prepare_config(base.with_overrides({**overrides, "train.output_dir": str(out_dir / "train")}))
    files, splits = category_splits(cfg)
    sets = {
        source: build_validation_set(splits.val, cfg.with_overrides({"data.val_anomaly_source": source}))
        for source in SOURCES
    }
    sets["test"] = load_test_set(files.test, cfg.data.image_size)
    recorder = _Recorder(sets, cfg)
    started = time.perf_counter()
    fit(cfg, callbacks=[recorder], progress=False, evaluate_test=False, num_threads=threads)
    shutil.rmtree(out_dir / "train", ignore_errors=True)  # ~160 MB of weights per trial, read by no one
    return {"overrides": dict(overrides), "history": recorder.rows, "wall_time_s": time.perf_counter() - started}


def chosen(history: Sequence[Mapping[str, float]], source: str, selection: str) -> Mapping[str, float]:
    """The evaluation a source selects: the first with the highest ``selection`` (fit's rule, NaN never wins)."""
    best: Mapping[str, float] | None = None
    for row in history:
        value = row[f"{source}/{selection}"]
        if best is None or (not math.isnan(value) and (math.isnan(best[f"{source}/{selection}"])
                                                          or value > best[f"{source}/{selection}"])):
            best = row
    if best is None:
        msg = "no evaluation recorded"
        raise ValueError(msg)
    return best


def summarise(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows: category x source x selection metric x test metric -> rho, n, and the regret of the choice."""
    rows = []
    for category, trials in results.items():
        for source in SOURCES:
            for selection in (keys.PIXEL_AUROC, keys.PIXEL_AUPRO, keys.IMAGE_AUROC):
                picked = {name: chosen(t["history"], source, selection) for name, t in trials.items()}
                winner = max(picked, key=lambda n: picked[n][f"{source}/{selection}"])
                for test_metric in METRICS:
                    pairs = [(p[f"{source}/{selection}"], p[f"test/{test_metric}"]) for p in picked.values()]
                    rc = val_test_rank_correlation(pairs)
                    best_test = max(p[f"test/{test_metric}"] for p in picked.values())
                    rows.append({
                        "category": category, "source": source, "val_metric": f"val_{selection}",
                        "test_metric": f"test_{test_metric}", "rho": rc.rho, "n": rc.n, "reason": rc.reason,
                        "chosen_trial": winner, "chosen_test": picked[winner][f"test/{test_metric}"],
                        "best_test": best_test,
                    })
    return rows


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| category | val source | val metric (selects) | test metric | rho | n | chosen trial | its test "
        "| best test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rho = "nan" if math.isnan(r["rho"]) else f"{r['rho']:+.2f}"
        lines.append(
            f"| {r['category']} | {r['source']} | {r['val_metric']} | {r['test_metric']} | {rho} | {r['n']} "
            f"| {r['chosen_trial']} | {r['chosen_test']:.3f} | {r['best_test']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="MVTec-layout dataset root")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--out", default="runs/valcorr", help="results folder (a rerun skips finished trials)")
    parser.add_argument("--trials", help="YAML mapping: trial name -> {dotted key: value}; default: six built-in")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every trial")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    args = parser.parse_args(argv)

    trials = TRIALS
    if args.trials:
        trials = {str(k): dict(v or {}) for k, v in yaml.safe_load(Path(args.trials).read_text()).items()}
    out = Path(args.out)
    results: dict[str, dict[str, Any]] = {}
    for category in args.categories:
        base = MemSegConfig().with_overrides(
            {**BASE, **parse_overrides(args.set), "data.root": args.root, "data.category": category}
        )
        results[category] = {}
        for name, overrides in trials.items():
            path = out / category / f"{name}.json"
            if path.is_file():
                results[category][name] = json.loads(path.read_text())
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{time.strftime('%H:%M:%S')}] {category} {name} {overrides}", flush=True)
            record = run_trial(base, overrides, out / category / name, args.threads)
            path.write_text(json.dumps(record, indent=1) + "\n")
            results[category][name] = record
            last = record["history"][-1]
            print(f"  {record['wall_time_s']:.0f} s; last eval: "
                  + ", ".join(f"{k}={v:.3f}" for k, v in last.items() if "/" in k), flush=True)
    rows = summarise(results)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    (out / "summary.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
