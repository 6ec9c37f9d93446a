"""Trained MemSeg against the training-free baseline on the realistic benchmark, as a markdown table.

For each category and seed: generate the benchmark (``memseg data realistic``) with that seed,
compute the nearest-memory-feature baseline (memseg.baselines.evaluate_baseline) and train MemSeg
with the learning test's settings (LEARNING in tests/integration/test_learning.py: 128 px, 300
steps, random frozen backbone), then report the best-on-validation checkpoint's test image AUROC,
pixel AUROC and AUPRO beside the baseline's on the same test split. The seed is both the dataset's
seed and ``train.seed`` offset, so several seeds vary the data and the training together.

    python scripts/realistic_baseline.py --categories brick grass gravel --seeds 0 1 2 \\
        --work runs/realistic_baseline [--steps 300] [--json results.json]

One training run at a time; each takes a few minutes on two CPU cores. Each finished run is
appended to ``<work>/results.jsonl``, and a rerun skips the (category, seed, steps) rows found there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from learning_settings import learning_settings  # scripts/learning_settings.py

from memseg.baselines import evaluate_baseline
from memseg.config import MemSegConfig
from memseg.data.surface_photos import CATEGORIES, generate_dataset
from memseg.metrics import keys
from memseg.training import fit

METRICS = (keys.TEST_IMAGE_AUROC, keys.TEST_PIXEL_AUROC, keys.TEST_PIXEL_AUPRO)


def run_one(category: str, seed: int, steps: int, work: Path, *, train: bool = True) -> dict[str, object]:
    data_root = work / f"data_seed{seed}"
    if not (data_root / category).is_dir():
        generate_dataset(data_root, size=128, categories=[category], seed=seed)
    overrides = {
        **learning_settings(),
        "data.root": str(data_root), "data.category": category,
        "train.steps": steps, "train.seed": 42 + seed,
        "train.output_dir": str(work / "runs" / f"{category}_seed{seed}_steps{steps}"),
    }
    cfg = MemSegConfig().with_overrides(overrides)
    started = time.perf_counter()
    baseline = evaluate_baseline(cfg, device="cpu")
    if not train:
        return {"category": category, "seed": seed, "baseline": {k: baseline[k] for k in METRICS},
                "baseline_val_pixel_auroc": baseline[keys.VAL_PIXEL_AUROC],
                "wall_time_s": round(time.perf_counter() - started, 1)}
    result = fit(cfg, eval_at_start=True, progress=False)
    return {
        "category": category, "seed": seed, "steps": steps, "best_step": result.best_step,
        "val_pixel_auroc_step0": result.history[0][keys.VAL_PIXEL_AUROC],
        "val_pixel_auroc_best": result.best_metrics[keys.VAL_PIXEL_AUROC],
        "trained": {k: result.test_metrics[k] for k in METRICS},
        "baseline": {k: baseline[k] for k in METRICS},
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def _cell(trained: float, baseline: float) -> str:
    return f"{trained:.3f} / {baseline:.3f} ({trained - baseline:+.3f})"


def table(rows: list[dict[str, object]]) -> str:
    head = ("| category | seed | steps | best step | image AUROC trained / baseline | pixel AUROC trained / baseline "
            "| AUPRO trained / baseline |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for row in rows:
        trained, baseline = row["trained"], row["baseline"]
        assert isinstance(trained, dict) and isinstance(baseline, dict)
        cells = [_cell(trained[k], baseline[k]) for k in METRICS]
        lead = f"| {row['category']} | {row['seed']} | {row['steps']} | {row['best_step']} |"
        lines.append(f"{lead} {' | '.join(cells)} |")
    by_category: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_category.setdefault(str(row["category"]), []).append(row)
    if any(len(group) > 1 for group in by_category.values()):
        gap_heads = " | ".join(f"{k} trained − baseline, mean ± sd" for k in METRICS)
        lines += ["", f"| category | seeds | {gap_heads} |", "|---|---|" + "---|" * len(METRICS)]
        for category, group in by_category.items():
            cells = []
            for k in METRICS:
                gaps = [row["trained"][k] - row["baseline"][k] for row in group]  # type: ignore[index]
                spread = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
                cells.append(f"{statistics.mean(gaps):+.3f} ± {spread:.3f}")
            lines.append(f"| {category} | {len(group)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def baseline_table(rows: list[dict[str, object]]) -> str:
    lines = ["| category | seed | baseline image AUROC | pixel AUROC | AUPRO | val pixel AUROC |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        base = row["baseline"]
        assert isinstance(base, dict)
        figures = " | ".join(f"{base[k]:.3f}" for k in METRICS)
        lines.append(f"| {row['category']} | {row['seed']} | {figures} | {row['baseline_val_pixel_auroc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"], choices=CATEGORIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("runs/realistic_baseline"))
    parser.add_argument("--json", type=Path, help="also write every row as a JSON list")
    parser.add_argument("--baseline-only", action="store_true",
                        help="only the training-free baseline (seconds per category): how hard each category is")
    args = parser.parse_args(argv)
    if args.baseline_only:
        print(baseline_table([run_one(c, seed, args.steps, args.work, train=False)
                              for seed in args.seeds for c in args.categories]))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    rows = []
    for seed in args.seeds:
        for category in args.categories:
            found = [r for r in done if (r["category"], r["seed"], r["steps"]) == (category, seed, args.steps)]
            if found:
                rows.append(found[-1])
                continue
            row = run_one(category, seed, args.steps, args.work)
            print(json.dumps(row), file=sys.stderr, flush=True)
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
