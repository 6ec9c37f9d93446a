"""``memseg sweep``: Ray Tune + Optuna over every category, tracked in MLflow by the driver, resumable.

The handler only parses flags; :func:`run_tracked_sweep` is the callable the pipeline flows and the
tests use. ``RAY_ADDRESS`` picks the cluster (unset: a local Ray instance) and
``MLFLOW_TRACKING_URI`` the tracking server (unset: a SQLite file under the storage folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

if TYPE_CHECKING:
    from sweeps.spec import SweepSpec

HELP = "hyperparameter sweep: one Optuna study + ASHA per category on Ray Tune, tracked in MLflow"
EPILOG = """\
examples:
  memseg sweep --config smoke                                  # CI-sized, 2 categories, generated data
  memseg sweep --config demo                                   # all 15 categories, minutes on a laptop
  RAY_ADDRESS=ray://head:10001 MLFLOW_TRACKING_URI=http://mlflow:5000 \\
    memseg sweep --config paper --data-root /mnt/cluster_storage/mvtec --storage s3://bucket/sweeps
  memseg sweep --config demo --resume                          # continue the latest demo sweep after a crash
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, metavar="NAME|YAML", help="smoke, demo, paper or a sweep spec YAML")
    p.add_argument("--categories", nargs="+", metavar="CAT", help="only these categories (default: the spec's)")
    p.add_argument("--resume", action="store_true", help="continue a sweep from its storage (default: the latest)")
    p.add_argument("--sweep-id", metavar="ID", help="name of the sweep (default: <config name>-<timestamp>)")
    p.add_argument("--data-root", metavar="DIR", help="dataset root (overrides data.root of the spec)")
    p.add_argument("--storage", metavar="PATH|URI", help="Tune storage: shared path or bucket URI (storage.path)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key, e.g. --set search.num_samples=4 --set base.train.steps=40 (repeatable)",
    )
    p.set_defaults(handler=handle)


def spec_from_args(args: argparse.Namespace) -> tuple[SweepSpec, dict[str, Any]]:
    """The sweep spec of ``--config`` with ``--set``, ``--data-root`` and ``--storage`` applied (also for `pipeline run`)."""
    from memseg.config import parse_overrides
    from sweeps.spec import load_sweep_spec

    changes = parse_overrides(args.overrides)
    if args.data_root:
        changes["data.root"] = args.data_root
    if args.storage:
        changes["storage.path"] = args.storage
    spec = load_sweep_spec(args.config)
    if changes:
        spec = spec.with_changes(changes)
    return spec, changes


def handle(args: argparse.Namespace) -> int:
    spec, changes = spec_from_args(args)
    return run_tracked_sweep(
        spec, categories=args.categories, resume=args.resume, sweep_id=args.sweep_id, changes=changes
    )


def run_tracked_sweep(
    spec: Any,
    *,
    categories: Sequence[str] | None = None,
    resume: bool = False,
    sweep_id: str | None = None,
    changes: dict[str, Any] | None = None,
    stream: TextIO = sys.stdout,
) -> int:
    """Plan, track and run a sweep; print the status table while it runs and the winners at the end.

    Returns:
        0 when every category produced a best trial, 1 otherwise.
    """
    from pipelines import tracking
    from sweeps import driver
    from sweeps.dataset import ensure_dataset
    from sweeps.spec import unique
    from sweeps.status import StatusCallback, StatusPrinter, SweepStatus, register_board, unregister_board

    storage_root = driver.absolute_storage(spec.storage.path)
    if resume:
        sweep_id = sweep_id or driver.latest_sweep_id(storage_root, spec.name)
        if sweep_id is None:
            raise driver.SweepError(f"--resume: no sweep of config {spec.name!r} under {storage_root}")
        recorded = driver.read_manifest(storage_root, sweep_id)
        if recorded is None:
            raise driver.SweepError(f"--resume: no sweep {sweep_id!r} under {storage_root}")
        # The spec that ran is what resumes (a restored study cannot change its space or budgets);
        # only where things are may differ (the data or the storage moved).
        where = {k: v for k, v in (changes or {}).items() if k in ("data.root", "storage.path")}
        spec, recorded_categories = recorded[0].with_changes(where) if where else recorded[0], recorded[1]
        categories = categories or recorded_categories
        manifest_categories = unique([*recorded_categories, *categories])
    else:
        sweep_id = sweep_id or driver.make_sweep_id(spec.name)
        if driver.read_manifest(storage_root, sweep_id) is not None:
            raise driver.SweepError(f"sweep {sweep_id!r} already exists under {storage_root}: pass --resume")
        manifest_categories = unique(categories or spec.categories)
    categories = unique(categories or spec.categories)

    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.local_store_uri(
        storage_root if not driver.is_uri(storage_root) else "runs"
    )
    tracking.check_tracking_store(uri)  # before anything slow: a dead server is the most common mistake

    data_root = Path(spec.data.root).expanduser().resolve()
    if spec.data.generate is not None:
        g = spec.data.generate
        ensure_dataset(data_root, categories, size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                       n_test_defect=g.n_test_defect, seed=g.seed)
    nodes = driver.connect_ray(tracking.worker_env(uri), spec.cluster.local_num_cpus)
    tracking.check_store_for_cluster(uri, nodes)
    if nodes > 1 and not driver.is_uri(storage_root):
        print(f"note: {nodes} nodes share storage {storage_root}: it must be a shared mount (NFS) on every node",
              file=stream)

    plans = driver.plan_sweep(spec, sweep_id, categories)
    driver.write_manifest(spec, sweep_id, manifest_categories)
    artifacts = None
    if tracking.is_local_store(uri) and not driver.is_uri(storage_root):
        artifacts = (Path(storage_root) / "mlartifacts").as_uri()
    tracker = tracking.SweepTracking(uri, sweep_id, spec_name=spec.name, description=spec.description,
                                     artifact_location=artifacts)
    # Parent runs and callbacks are made here, in the main thread, before the study threads start.
    callbacks = {
        p.category: [tracker.callback(p), StatusCallback(sweep_id, p.category, p.step_budget)] for p in plans
    }

    board = SweepStatus(sweep_id, plans[0].metric, categories)
    register_board(board)
    print(f"sweep {sweep_id}: {len(plans)} categories x {spec.search.num_samples} trials on {nodes} node(s), "
          f"resources {driver.cluster_resources()}\n  storage {plans[0].storage_path}\n  MLflow  {uri}",
          file=stream, flush=True)
    try:
        with StatusPrinter(board, spec.cluster.status_interval_s, stream) as printer:
            result = driver.run_sweep(spec, plans, resume=resume, callbacks_for=lambda p: callbacks[p.category],
                                      board=board)
            printer.print()
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with  memseg sweep --config {spec.name} --resume --sweep-id {sweep_id}",
              file=stream, flush=True)
        os._exit(130)  # the study threads cannot be joined; Ray ends this job's trials with the driver
    finally:
        unregister_board(sweep_id)
    tracking.close_sweep(tracker, plans, result.categories)
    print(format_summary(result, uri, tracker.experiment_id), file=stream, flush=True)
    return 0 if all(r.best is not None for r in result.categories.values()) else 1


def format_summary(result: Any, uri: str, experiment_id: str) -> str:
    """The end-of-sweep report: best score, trial and swept values per category, and where to look."""
    from pipelines import tracking
    from sweeps.search_space import overrides_from_params

    lines = [f"\nsweep {result.sweep_id} done in {result.wall_time_s / 60:.1f} min; best {result.metric} per category:"]
    for cat, res in result.categories.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(res.counts().items()))
        if res.best is None:
            lines.append(f"  {cat}: no result ({res.error or 'no trial reported'}) [{counts}]")
            continue
        lines.append(f"  {cat}: {res.best.score:.4f}  trial {res.best.trial_id}  [{counts}]")
        for key, value in sorted(overrides_from_params(res.best.params).items()):
            lines.append(f"      {key} = {value}")
        if res.best_config_path:
            lines.append(f"      full config: {res.best_config_path}")
        if res.best.checkpoint_path:
            lines.append(f"      checkpoint: {res.best.checkpoint_path}")
    lines.append(f"MLflow: {tracking.ui_hint(uri, experiment_id)}")
    return "\n".join(lines)
