"""``memseg sweep``: Ray Tune + Optuna over every category, tracked in MLflow by the driver, resumable.

The handler parses flags and calls :func:`pipelines.sweep_stage.run_tracked_sweep`. ``RAY_ADDRESS``
picks the cluster (unset: a local Ray instance) and ``MLFLOW_TRACKING_URI`` the tracking server
(unset: a SQLite file under the storage folder).
"""

from __future__ import annotations

import argparse

from pipelines.commands._common import spec_from_args, tracking_uri

HELP = "hyperparameter sweep: one Optuna study + ASHA per category on Ray Tune, tracked in MLflow"
EPILOG = """\
examples:
  memseg sweep --config smoke                                  # CI-sized, 2 categories, generated data
  memseg sweep --config demo                                   # all 15 categories, minutes on a laptop
  RAY_ADDRESS=ray://head:10001 MLFLOW_TRACKING_URI=https://mlflow.example.com \\
    memseg sweep --config paper --data-root /mnt/cluster_storage/mvtec --storage s3://bucket/sweeps
  memseg sweep --config demo --resume                          # continue the latest demo sweep after a crash
  memseg sweep --config demo --resume --retry-failed           # ... and rerun its failed trials (cause fixed)
  memseg sweep --config demo --sync                            # after an MLflow outage: write what it missed
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, metavar="NAME|YAML", help="smoke, demo, paper or a sweep spec YAML")
    p.add_argument("--categories", nargs="+", metavar="CAT", help="only these categories (default: the spec's)")
    p.add_argument("--resume", action="store_true", help="continue a sweep from its storage (default: the latest)")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run the trials that failed for good again (after fixing their cause)")
    p.add_argument("--sync", action="store_true",
                   help="write into MLflow what a sweep's tracking missed (after an outage), from Tune's results; "
                   "trains nothing (default: the latest sweep of --config)")
    p.add_argument("--sweep-id", metavar="ID", help="name of the sweep (default: <config name>-<timestamp>)")
    p.add_argument("--data-root", metavar="DIR", help="dataset root (overrides data.root of the spec)")
    p.add_argument("--storage", metavar="PATH|URI", help="Tune storage: shared path or bucket URI (storage.path)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key, e.g. --set search.num_samples=4 --set base.train.steps=40 (repeatable)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.sweep_stage import run_tracked_sweep, sync_tracked_sweep
    from sweeps.driver import SweepError

    spec, changes = spec_from_args(args)
    if args.retry_failed and not args.resume:
        raise SweepError("--retry-failed reruns the failed trials of an existing sweep: add --resume")
    if args.sync:
        if args.resume:
            raise SweepError("--sync writes a sweep's missing tracking without running it: drop --resume "
                             "(--resume reconciles too)")
        synced = sync_tracked_sweep(spec, tracking_uri=tracking_uri(None, spec.storage.path), sweep_id=args.sweep_id,
                                    changes=changes)
        return 0 if not synced.untracked else 1
    sweep = run_tracked_sweep(
        spec, tracking_uri=tracking_uri(None, spec.storage.path), categories=args.categories, resume=args.resume,
        sweep_id=args.sweep_id, changes=changes, retry_failed=args.retry_failed,
    )
    return 0 if sweep.ok else 1
