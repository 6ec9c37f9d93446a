"""Why do trained MemSeg maps localise worse than the training-free baseline on realistic defects?

One training run per (trial, category, seed) at the learning test's budget (LEARNING in
tests/integration/test_learning.py: 128 px, 300 steps, random frozen backbone;
``train.seed = 42 + seed``, dataset seed = ``seed``, as scripts/realistic_baseline.py does, so its
default-recipe rows are comparable). ``--steps`` and ``--set`` make a cheaper screen. At every
evaluation the checkpoint is scored, from ONE set of maps each, on:

- both validation sources (``data.val_anomaly_source`` = ``training_synthesis`` and ``held_out``),
  so the checkpoint choice of either source can be read off afterwards;
- the test split, under several scorings of the same maps: the image score's ``top_k`` and a
  Gaussian smoothing of the map (sigma in pixels; 0 = none, the authors'). The runs keep the raw map
  (``model.map_smoothing_sigma=0``) so that these scorings apply once; ``k100_s4`` is what the
  model's default blur (sigma 4) gives, up to the border rule (OpenCV's reflect here, reflect-101 in
  the model).

The training-free baseline (memseg.baselines) is scored once per (category, seed) with the same
scorings. Test figures are only reported, never used to choose.

    python scripts/quality_study.py --dataset realistic --categories brick grass gravel --seeds 0 \\
        --trials defaults small_masks --work runs/quality
    python scripts/quality_study.py --categories gravel --steps 100 --set data.image_size=64 \
        --set train.eval_interval=25 --trials defaults ridge_masks lr_0.12 --work runs/quality   # screen
    python scripts/quality_study.py --work runs/quality --summary      # tables from what is there

Rows go to ``<work>/runs.jsonl`` and ``<work>/baseline.jsonl``; a rerun skips what is there. A run's
evaluations also go to ``<work>/partial/*.jsonl`` as they happen. Runs go trial by trial in the
order of ``--trials`` (every seed and category of the first trial, then the next), so a study cut
short has its first trials complete.

On a GPU machine, many small runs share the card: ``--device cuda --jobs 12 --threads 1`` runs 12
at once in separate processes (the datasets are generated first, once).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from learning_settings import learning_settings  # scripts/learning_settings.py

from memseg.baselines import NearestMemoryBaseline
from memseg.config import MemSegConfig, parse_overrides
from memseg.data import surface_photos, synthetic_mvtec
from memseg.data.datasets import EvalSet, build_validation_set, category_splits, load_memory_images, load_test_set
from memseg.evaluation import predict_maps
from memseg.inference import load_checkpoint
from memseg.metrics import compute_metrics, keys
from memseg.training import fit
from memseg.training.loop import prepare_config

SOURCES = ("training_synthesis", "held_out")
METRICS = (keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO)
# (top_k, smoothing sigma in px): the authors' scoring first.
SCORINGS: tuple[tuple[int, float], ...] = ((100, 0.0), (25, 0.0), (100, 2.0), (25, 2.0), (100, 4.0), (25, 4.0))
DEFAULT_SCORING = SCORINGS[0]
TRIALS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # Smaller, more fragmented synthetic masks: realistic defects are thin or small (0.2-10 % of the image).
    "small_masks": {"synthesis.perlin_min_scale_exp": 2},
    # Half of the masks thin lines (cracks, scratches) instead of blobs.
    "ridge_masks": {"synthesis.ridge_mask_probability": 0.5},
    "sparse_masks": {"synthesis.perlin_threshold": 0.6, "synthesis.perlin_min_scale_exp": 1},
    "structure_only": {"synthesis.texture_probability": 0.0},
    "opaque": {"synthesis.transparency_min": 0.5},
    "focal_heavy": {"loss.l1_weight": 0.2, "loss.focal_weight": 0.8, "loss.focal_gamma": 2.0},
    "lr_0.01": {"optim.lr": 0.01},
    "lr_0.12": {"optim.lr": 0.12},
    # Difference to the nearest memory feature anywhere instead of at the same location.
    "nearest_memory": {"model.memory_match": "nearest"},
    # The same against a 2,048-vector greedy coreset per level: near aligned matching's cost at 256 px.
    "nearest_coreset_2048": {"model.memory_match": "nearest", "model.memory_coreset": 2048},
    # Exact nearest matching, but only within 3 feature cells of each location in every memory image.
    "nearest_window_3": {"model.memory_match": "nearest", "model.memory_window": 3},
    "head_init_default": {"model.head_init": "default"},
    "nearest_focal_heavy": {"model.memory_match": "nearest", "loss.l1_weight": 0.2, "loss.focal_weight": 0.8,
                            "loss.focal_gamma": 2.0},
    "nearest_lr_0.01": {"model.memory_match": "nearest", "optim.lr": 0.01},
    # Bigger, blob-like masks: no Perlin lattice finer than 8 cells (stains, patches, warps are blobs).
    "nearest_large_masks": {"model.memory_match": "nearest", "synthesis.perlin_max_scale_exp": 4},
    "nearest_opaque": {"model.memory_match": "nearest", "synthesis.transparency_min": 0.5},
    # o_scale 1 (the authors' value for cable and transistor): the head sees mostly the memory difference.
    "nearest_feature_scale_1": {"model.memory_match": "nearest", "model.feature_scale": 1.0},
    # Large masks closed grass; a lower lr helped grass AUPRO most: whether the two gains add up.
    "nearest_large_masks_lr_0.01": {"model.memory_match": "nearest", "synthesis.perlin_max_scale_exp": 4,
                                    "optim.lr": 0.01},
    # Large masks closed grass; o_scale 1 helped gravel most: whether one recipe keeps both.
    "nearest_large_masks_feature_scale_1": {"model.memory_match": "nearest", "synthesis.perlin_max_scale_exp": 4,
                                            "model.feature_scale": 1.0},
}


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT) for m in maps])


def scored(maps: np.ndarray, data: EvalSet, scorings: Sequence[tuple[int, float]], fpr: float) -> dict[str, float]:
    """``{"k100_s0/pixel_aupro": ...}`` for every scoring; the default scoring also per defect type."""
    out: dict[str, float] = {}
    for top_k, sigma in scorings:
        per_type = data.defect_types if (top_k, sigma) == DEFAULT_SCORING else None
        figures = compute_metrics(smooth(maps, sigma), data.masks, data.labels, per_type, top_k=top_k, fpr_limit=fpr)
        tag = f"k{top_k}_s{sigma:g}"
        out.update({f"{tag}/{k}": float(v) for k, v in figures.items() if k.split("/")[0] in METRICS})
    return out


class Recorder:
    """Scores every evaluation's checkpoint on both validation sources and the test split."""

    def __init__(self, sets: Mapping[str, EvalSet], cfg: MemSegConfig, partial: Path) -> None:
        self.sets = sets
        self.cfg = cfg
        self.partial = partial  # every row as it comes, so a run stopped early still leaves its curve
        self.rows: list[dict[str, float]] = []

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        model, _ = load_checkpoint(checkpoint_dir / "model.pt", DEVICE[0])
        row: dict[str, float] = {"step": float(step)}
        fpr = self.cfg.eval.aupro_fpr_limit
        for name, data in self.sets.items():
            maps = predict_maps(model, data.images, self.cfg.eval.batch_size, DEVICE[0])
            scorings = SCORINGS if name == "test" else (DEFAULT_SCORING,)
            row.update({f"{name}/{k}": v for k, v in scored(maps, data, scorings, fpr).items()})
        self.rows.append(row)
        _append(self.partial, row)


def dataset_root(work: Path, dataset: str, seed: int, category: str) -> Path:
    root = work / f"{dataset}_seed{seed}"
    if not (root / category).is_dir():
        module = surface_photos if dataset == "realistic" else synthetic_mvtec
        module.generate_dataset(root, size=128, categories=[category], seed=seed)
    return root


EXTRA: dict[str, Any] = {}  # --set: applied to every run and to the baseline (e.g. a smaller screen budget)
DEVICE = ["cpu"]  # --device: training, evaluation and the baseline (not part of the budget tag)


def config_for(work: Path, dataset: str, category: str, seed: int, overrides: Mapping[str, Any]) -> MemSegConfig:
    base = {
        # The raw map: the scorings below blur it themselves (sigma 4 = the model's default blur).
        **learning_settings(), "eval.heatmap_samples": 0, "model.map_smoothing_sigma": 0.0, **EXTRA,
        "data.root": str(dataset_root(work, dataset, seed, category)), "data.category": category,
        "train.seed": 42 + seed, "train.device": DEVICE[0],
    }
    return MemSegConfig().with_overrides({**base, **overrides})


def run_baseline(work: Path, dataset: str, category: str, seed: int) -> dict[str, Any]:
    cfg = prepare_config(config_for(work, dataset, category, seed, {}))
    files, splits = category_splits(cfg)
    torch.manual_seed(cfg.train.seed)  # the random-weights backbone, as fit() and evaluate_baseline build it
    baseline = NearestMemoryBaseline(cfg, DEVICE[0])
    baseline.build_memory(load_memory_images(splits.memory, cfg.data.image_size))
    test = load_test_set(files.test, cfg.data.image_size)
    maps = baseline.anomaly_map(test.images).cpu().numpy()
    figures = {f"test/{k}": v for k, v in scored(maps, test, SCORINGS, cfg.eval.aupro_fpr_limit).items()}
    return {"dataset": dataset, "category": category, "seed": seed, "budget": budget_tag(), "figures": figures,
            "device": DEVICE[0]}


def budget_tag() -> str:
    """What --set changed, so screens at another budget are kept apart in the tables."""
    return ",".join(f"{k}={v}" for k, v in sorted(EXTRA.items())) or "learning"


def run_trial(
    work: Path, dataset: str, trial: str, category: str, seed: int, steps: int, threads: int
) -> dict[str, Any]:
    overrides = {
        **TRIALS[trial], "train.steps": steps,
        "train.output_dir": str(work / "train" / f"{dataset}_{trial}_{category}_{seed}_{steps}"),
    }
    cfg = prepare_config(config_for(work, dataset, category, seed, overrides))
    files, splits = category_splits(cfg)
    sets = {
        f"val_{source}": build_validation_set(splits.val, cfg.with_overrides({"data.val_anomaly_source": source}))
        for source in SOURCES
    }
    sets["test"] = load_test_set(files.test, cfg.data.image_size)
    partial = work / "partial" / f"{dataset}_{budget_tag()}_{trial}_{category}_{seed}_{steps}.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    recorder = Recorder(sets, cfg, partial)
    started = time.perf_counter()
    fit(cfg, callbacks=[recorder], progress=False, evaluate_test=False, eval_at_start=True, num_threads=threads)
    return {
        "dataset": dataset, "trial": trial, "overrides": TRIALS[trial], "category": category, "seed": seed,
        "steps": steps, "budget": budget_tag(), "history": recorder.rows,
        "wall_time_s": round(time.perf_counter() - started, 1), "device": DEVICE[0],
    }


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _append(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def choose(history: Sequence[Mapping[str, float]], how: str) -> Mapping[str, float]:
    """The evaluation a rule keeps: ``last``, or the first with the highest validation pixel AUROC of a source
    (fit's rule; step 0 is a candidate, as with ``eval_at_start``)."""
    if how == "last":
        return history[-1]
    key = f"val_{how}/k100_s0/{keys.PIXEL_AUROC}"
    best = history[0]
    for row in history[1:]:
        if not math.isnan(row[key]) and (math.isnan(best[key]) or row[key] > best[key]):
            best = row
    return best


def summary(work: Path) -> str:
    runs, bases = _read(work / "runs.jsonl"), _read(work / "baseline.jsonl")
    base = {(b["dataset"], b.get("budget", "learning"), b["category"], b["seed"]): b["figures"] for b in bases}
    lines = ["| dataset | trial | category | seed | checkpoint | scoring | chosen step | image AUROC | pixel AUROC "
             "| AUPRO | baseline image / pixel / AUPRO (same scoring) |", "|" + "---|" * 11]
    gaps: dict[tuple[str, str, str, str, str], list[tuple[float, ...]]] = {}
    for run in runs:
        budget = run.get("budget", "learning")
        b = base.get((run["dataset"], budget, run["category"], run["seed"]), {})
        for how in ("training_synthesis", "held_out", "last"):
            row = choose(run["history"], how)
            for top_k, sigma in SCORINGS:
                tag = f"k{top_k}_s{sigma:g}"
                t = [row[f"test/{tag}/{k}"] for k in METRICS]
                bl = [b.get(f"test/{tag}/{k}", math.nan) for k in METRICS]
                if how == "training_synthesis" or (how == "held_out" and (top_k, sigma) == DEFAULT_SCORING):
                    lines.append(
                        f"| {run['dataset']} {budget} | {run['trial']}@{run['steps']} | {run['category']} "
                        f"| {run['seed']} | {how} | {tag} "
                        f"| {int(row['step'])} | " + " | ".join(f"{v:.3f}" for v in t)
                        + " | " + " / ".join(f"{v:.3f}" for v in bl) + " |"
                    )
                group = (f"{run['dataset']} {budget}", f"{run['trial']}@{run['steps']}", how, tag, run["category"])
                gaps.setdefault(group, []).append(tuple(x - y for x, y in zip(t, bl, strict=True)))
    lines += ["", "| dataset | trial | checkpoint | scoring | category | n "
              "| image / pixel AUROC / AUPRO minus baseline, mean (sd) |", "|" + "---|" * 7]
    for (dataset, trial, how, tag, category), values in sorted(gaps.items()):
        cells = []
        for i in range(len(METRICS)):
            xs = [v[i] for v in values]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):+.3f} ({sd:.3f})")
        lines.append(f"| {dataset} | {trial} | {how} | {tag} | {category} | {len(values)} | {' / '.join(cells)} |")
    return "\n".join(lines)


def _init_worker(extra: Mapping[str, Any], device: str, threads: int) -> None:
    EXTRA.update(extra)
    DEVICE[0] = device
    torch.set_num_threads(threads)


def _baseline_task(work: Path, dataset: str, category: str, seed: int) -> tuple[str, dict[str, Any]]:
    return "baseline.jsonl", run_baseline(work, dataset, category, seed)


def _trial_task(work: Path, dataset: str, trial: str, category: str, seed: int, steps: int,
                threads: int) -> tuple[str, dict[str, Any]]:
    return "runs.jsonl", run_trial(work, dataset, trial, category, seed, steps, threads)


def pending(args: argparse.Namespace) -> list[tuple[Any, ...]]:
    """What is not in ``<work>`` yet: baselines first, then the runs trial by trial."""
    tag = budget_tag()
    have_base = {(b["dataset"], b.get("budget", "learning"), b["category"], b["seed"])
                 for b in _read(args.work / "baseline.jsonl")}
    have_runs = {(r["dataset"], r.get("budget", "learning"), r["trial"], r["category"], r["seed"], r["steps"])
                 for r in _read(args.work / "runs.jsonl")}
    tasks: list[tuple[Any, ...]] = [
        (_baseline_task, args.work, args.dataset, category, seed)
        for seed in args.seeds for category in args.categories
        if (args.dataset, tag, category, seed) not in have_base
    ]
    tasks += [
        (_trial_task, args.work, args.dataset, trial, category, seed, args.steps, args.threads)
        for trial in args.trials for seed in args.seeds for category in args.categories
        if (args.dataset, tag, trial, category, seed, args.steps) not in have_runs
    ]
    return tasks


def run_pending(args: argparse.Namespace) -> None:
    tasks = pending(args)
    for seed in args.seeds:  # before any worker starts: workers would race to write the same files
        for category in args.categories:
            dataset_root(args.work, args.dataset, seed, category)
    started = time.perf_counter()

    def record(done: int, name: str, row: Mapping[str, Any]) -> None:
        _append(args.work / name, row)
        what = row.get("trial", "baseline")
        print(f"[{time.strftime('%H:%M:%S')}] {done}/{len(tasks)} {what} {row['category']} seed {row['seed']} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    if args.jobs == 1:
        for i, (fn, *task_args) in enumerate(tasks, 1):
            record(i, *fn(*task_args))
        return
    # spawn, not fork: each worker gets its own CUDA context
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_init_worker,
                             initargs=(dict(EXTRA), DEVICE[0], args.threads)) as pool:
        futures = {pool.submit(fn, *task_args): task_args for fn, *task_args in tasks}
        for i, future in enumerate(as_completed(futures), 1):
            try:
                record(i, *future.result())
            except Exception as exc:  # one failed run must not lose the others
                print(f"FAILED {futures[future]}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("realistic", "synthetic"), default="realistic")
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--trials", nargs="+", default=["defaults"], choices=sorted(TRIALS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training, evaluation, baseline)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run and the baseline (a cheaper screen budget)")
    parser.add_argument("--work", type=Path, default=Path("runs/quality"))
    parser.add_argument("--summary", action="store_true", help="only print the tables of what is there")
    args = parser.parse_args(argv)
    _init_worker(parse_overrides(args.set), args.device, args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        run_pending(args)
    print(summary(args.work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
