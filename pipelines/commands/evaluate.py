"""``memseg evaluate``: the metrics of a trained checkpoint on a category's test (or validation) split."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from memseg.errors import ImageReadError
from pipelines.commands._common import add_model_args, checkpoint_file

DESCRIPTION = """\
Evaluate a trained MemSeg checkpoint (a file or folder, or a registered model version
models:/<name>@<alias> / models:/<name>/<version>) on one category of an MVTec-layout dataset.

Prints image AUROC, pixel AUROC, AUPRO (integrated to FPR eval.aupro_fpr_limit = 0.3, normalised),
image and pixel F1-max, overall and per defect type (each defect type together with the good
images). Image score = mean of the eval.top_k (100) highest pixels of the anomaly map.

The image size, category, dataset root and all model settings come from the config stored in the
checkpoint; --root and --category override where the data is read from.
"""

EPILOG = """\
Splits:
  test   test/ of the category (default): the figures to report. Never use them to pick a model.
  val    the held-out train/good images with fixed-seed synthetic anomalies, exactly the set the
         training loop selected its best checkpoint on (reproduces the val_* metrics).

Examples:
  memseg evaluate --checkpoint runs/train/best_model.pt
  memseg evaluate --checkpoint runs/train --root data/mvtec --json runs/train/test_metrics.json
  memseg evaluate --checkpoint runs/train/checkpoints/latest --split val
  memseg evaluate --checkpoint models:/memseg-mvtec-bottle@champion --root data/mvtec
"""

COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics of a checkpoint on a category's test split",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, "; a training output folder works too")
    parser.add_argument("--root", metavar="DIR", help="dataset root (default: the checkpoint's data.root)")
    parser.add_argument("--category", metavar="NAME", help="category folder (default: the checkpoint's data.category)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which split to score (default: test)")
    parser.add_argument("--json", metavar="OUT", help="also write the metrics to this JSON file")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (eval.batch_size)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: $MEMSEG_NUM_THREADS)")
    parser.set_defaults(handler=run)


def format_table(metrics: Mapping[str, float], defect_types: list[str]) -> str:
    """Rows: overall, then each defect type; columns: the metrics; ``-`` where undefined."""
    rows = [("overall", "")] + [(t, f"/{t}") for t in defect_types]
    width = max(len("defect type"), *(len(name) for name, _ in rows))
    lines = [f"{'defect type':<{width}}  " + "  ".join(f"{c:>12}" for c in COLUMNS)]
    for name, suffix in rows:
        cells = []
        for column in COLUMNS:
            value = metrics.get(f"{column}{suffix}")
            cells.append(f"{value:>12.4f}" if value is not None else f"{'-':>12}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _f1_threshold(labels: object, scores: object) -> float | None:
    from memseg.metrics import f1_max_threshold

    try:
        return f1_max_threshold(labels, scores)[1]
    except ValueError:  # no anomalous image in the split
        return None


def run(args: argparse.Namespace) -> int:
    from memseg.evaluation import evaluate_split
    from memseg.inference import load_checkpoint
    from memseg.metrics import image_scores
    from memseg.training import resolve_device
    from memseg.training.seeding import set_num_threads

    if args.root and not Path(args.root).expanduser().is_dir():  # before the model loads
        msg = f"{args.root}: no such dataset folder (--root)"
        raise ImageReadError(msg)
    set_num_threads(args.threads)
    device = resolve_device(args.device)
    with checkpoint_file(args) as (file, checkpoint):
        model, cfg = load_checkpoint(file, device)
    overrides: dict[str, object] = {}
    if args.root:
        overrides["data.root"] = str(Path(args.root).expanduser().resolve())
    if args.category:
        if args.category != cfg.data.category:
            print(
                f"note: the checkpoint was trained on {cfg.data.category!r}; its memory bank holds "
                f"{cfg.data.category!r} images, scoring {args.category!r}"
            )
        overrides["data.category"] = args.category
    if args.batch_size:
        overrides["eval.batch_size"] = args.batch_size
    cfg = cfg.with_overrides(overrides) if overrides else cfg

    evaluation = evaluate_split(model, cfg, args.split, device)
    data, metrics = evaluation.data, evaluation.metrics
    threshold = _f1_threshold(data.labels, image_scores(evaluation.maps, cfg.eval.top_k))
    defect_types = sorted({t for t, label in zip(data.defect_types, data.labels, strict=True) if label == 1})
    n_anomalous = int(sum(data.labels))
    print(
        f"{checkpoint}: {cfg.data.category} {args.split} split, {len(data)} images "
        f"({len(data) - n_anomalous} good, {n_anomalous} anomalous), {cfg.data.image_size} px, "
        f"top-{cfg.eval.top_k} image score, AUPRO to FPR {cfg.eval.aupro_fpr_limit}"
    )
    print(format_table(metrics, defect_types))
    if threshold is not None:
        print(f"image score threshold at the best image F1 on this split: {threshold:.6g} (memseg predict --threshold)")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "checkpoint": str(checkpoint),
            "category": cfg.data.category,
            "split": args.split,
            "images": len(data),
            "anomalous_images": n_anomalous,
            "metrics": metrics,
            "image_f1_max_threshold": threshold,
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"metrics written to {out}")
    return 0
