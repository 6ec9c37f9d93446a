"""``memseg train``: train MemSeg on one category, keep the best-on-validation checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.commands._common import add_config_args, config_from_args

DESCRIPTION = """\
Train MemSeg on one category of an MVTec-layout dataset.

The first model.memory_size images of train/good (by filename) become the memory bank and are held
out of training; a validation split of the rest gets synthetic anomalies drawn with a fixed seed
(eval.val_seed). Every train.eval_interval steps the model is validated, the best checkpoint on
eval.selection_metric is kept, and at the end that checkpoint is evaluated once on the test split.
"""

EPILOG = """\
Useful --set keys (all fields: see memseg/config.py):
  data.root=DIR  data.category=NAME  data.image_size=256  data.num_workers=4
  data.dtd_root=DIR (memseg data download dtd; required by the default data.texture_source=dtd)
  data.texture_source=procedural (generated textures instead of DTD: not the paper's anomalies)
  train.steps=2700  train.batch_size=8  train.eval_interval=100  train.device=auto|cpu|cuda
  train.seed=42  optim.optimizer=sgd|adamw  optim.lr=0.04  optim.warmup_fraction=0.1
  model.backbone_weights=imagenet|none|/path/to/resnet18.pth  model.memory_size=30
  synthesis.perlin_threshold=0.5  eval.selection_metric=val_pixel_auroc

Output (under --output-dir, default train.output_dir):
  config.yaml                 the resolved config
  best_model.pt               best-on-validation model (load with `memseg evaluate`/`memseg predict`)
  checkpoints/latest/         model.pt, best_model.pt, train_state.pt, heatmaps/*.png (resume with --resume)
  metrics.json                validation (val_*) and test (test_*) metrics of the best checkpoint

Example (a generated dataset, CPU, a few minutes):
  memseg data synth --out data/synthetic --size 128
  memseg train --set data.root=data/synthetic --set data.category=carpet --set data.image_size=128 \\
      --set data.texture_source=procedural --set model.backbone_weights=none --set train.steps=300 \\
      --set train.eval_interval=50
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train MemSeg on one category",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--output-dir", metavar="DIR", help="where checkpoints and metrics go (train.output_dir)")
    parser.add_argument(
        "--resume", metavar="DIR", help="continue from a checkpoint directory (e.g. OUTPUT/checkpoints/latest)"
    )
    parser.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar; print one line per evaluation")
    parser.add_argument(
        "--eval-at-start", action="store_true", help="also validate the untrained model (step 0)"
    )
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: $MEMSEG_NUM_THREADS)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from memseg.training import fit
    from memseg.training.console import ConsoleCallback, format_metrics

    cfg = config_from_args(args)
    if args.output_dir:
        cfg = cfg.with_overrides({"train.output_dir": args.output_dir})
    callbacks = [ConsoleCallback()] if args.no_progress else []
    result = fit(
        cfg,
        callbacks=callbacks,
        resume_from=Path(args.resume) if args.resume else None,
        progress=not args.no_progress,
        evaluate_test=not args.no_test,
        eval_at_start=args.eval_at_start,
        num_threads=args.threads,
    )
    print(f"best step {result.best_step}: {format_metrics(result.best_step, result.best_metrics)}")
    if result.test_metrics:
        shown = {k: v for k, v in result.test_metrics.items() if "/" not in k}
        print("test: " + " | ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())))
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"resume from:     {result.checkpoint_dir}")
    print(f"metrics:         {result.metrics_file}")
    return 0
