"""``memseg pipeline run``: sweep -> register -> promote -> report in one resumable command (issue 4, item 5).

The handler only parses flags; :func:`pipelines.flow.run_pipeline` does the work (tests call it directly).
"""

from __future__ import annotations

import argparse

HELP = "end-to-end: sweep every category, register the winners, promote behind the gate, write the report"
EPILOG = """\
examples:
  memseg pipeline run --config demo                  # the README's main command: 15 categories, generated data
  memseg pipeline run --config smoke --categories bottle carpet
  memseg pipeline run --config demo                  # again: finished stages are skipped, the report rewritten
  memseg pipeline run --config demo --new            # a fresh sweep instead of continuing the latest one
  MLFLOW_TRACKING_URI=http://mlflow:5000 memseg pipeline run --config paper --data-root /mnt/mvtec
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pipeline", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    run = sub.add_parser(
        "run", help="run (or continue) the pipeline", description=HELP + ".", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", required=True, metavar="NAME|YAML", help="smoke, demo, paper or a sweep spec YAML")
    run.add_argument("--categories", nargs="+", metavar="CAT", help="only these categories (default: the spec's)")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--sweep-id", metavar="ID", help="the sweep to run or continue (default: the latest of --config)")
    which.add_argument("--new", action="store_true", help="start a new sweep even if one of this config exists")
    run.add_argument("--data-root", metavar="DIR", help="dataset root (overrides data.root of the spec)")
    run.add_argument("--storage", metavar="PATH|URI", help="Tune storage: shared path or bucket URI (storage.path)")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key, e.g. --set search.num_samples=4 (repeatable)",
    )
    run.add_argument("--tracking-uri", metavar="URI",
                     help="MLflow tracking server (default: $MLFLOW_TRACKING_URI, else SQLite under the storage)")
    run.add_argument("--report-dir", metavar="DIR", help="where the report goes (default: runs/reports/<sweep id>)")
    run.add_argument("--device", default="auto", help="device of the test evaluation and the gate (default: auto)")
    add_policy_args(run)
    run.set_defaults(handler=handle)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The promotion gate's flags (shared with ``memseg promote``); unset = the policy's defaults."""
    g = parser.add_argument_group("promotion gate")
    g.add_argument("--metric", help="primary metric on the gate data (default: pixel_auroc)")
    g.add_argument("--margin", type=float, help="challenger must beat the champion by more than this (default: 0)")
    g.add_argument("--guard", dest="guard_metrics", nargs="*", metavar="METRIC",
                   help="metrics that must not regress (default: image_auroc pixel_aupro)")
    g.add_argument("--tolerance", dest="guard_tolerance", type=float,
                   help="largest accepted drop of a guard metric (default: 0.01)")
    g.add_argument("--floor", type=float, help="a category's first model needs metric >= floor (default: 0.5)")
    g.add_argument("--gate-data", dest="gate_data", choices=("val", "test"),
                   help="held-out data of the gate: val (default, leakage-free) or test")


def policy_from_args(args: argparse.Namespace):  # noqa: ANN201 - PromotionPolicy, imported lazily
    from pipelines.promotion import make_policy

    guards = tuple(args.guard_metrics) if args.guard_metrics is not None else None
    return make_policy(metric=args.metric, margin=args.margin, guard_metrics=guards,
                       guard_tolerance=args.guard_tolerance, floor=args.floor, data=args.gate_data)


def handle(args: argparse.Namespace) -> int:
    from pipelines.commands.sweep import spec_from_args
    from pipelines.flow import run_pipeline

    spec, _ = spec_from_args(args)
    result = run_pipeline(
        spec, categories=args.categories, sweep_id=args.sweep_id, new=args.new, tracking_uri=args.tracking_uri,
        policy=policy_from_args(args), report_dir=args.report_dir, device=args.device,
    )
    return 0 if result.ok else 1
