"""``memseg pipeline run``: sweep -> register -> promote -> report in one resumable command.

The handler only parses flags; :func:`pipelines.flow.run_pipeline` does the work (tests call it directly).
"""

from __future__ import annotations

import argparse

from pipelines.commands._common import add_policy_args, policy_from_args, spec_from_args, tracking_uri

HELP = "end-to-end: sweep every category, register the winners, promote behind the gate, write the report"
EPILOG = """\
examples:
  memseg pipeline run --config demo                  # the README's main command: 15 categories, generated data
  memseg pipeline run --config smoke --categories bottle carpet
  memseg pipeline run --config demo                  # again: finished stages are skipped, the report rewritten
  memseg pipeline run --config demo --new            # a fresh sweep instead of continuing the latest one
  memseg pipeline run --config demo --retry-failed   # continue it, rerunning the trials that failed (cause fixed)
  MLFLOW_TRACKING_URI=https://mlflow.example.com memseg pipeline run --config paper --data-root /mnt/mvtec
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
    which.add_argument("--sweep-id", metavar="ID",
                       help="the sweep to run or continue (default: the latest of --config)")
    which.add_argument("--new", action="store_true", help="start a new sweep even if one of this config exists")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun the continued sweep's trials that failed for good (after fixing their cause)")
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


def handle(args: argparse.Namespace) -> int:
    from pipelines.flow import run_pipeline

    spec, _ = spec_from_args(args)
    result = run_pipeline(
        spec, tracking_uri=tracking_uri(args.tracking_uri, spec.storage.path), categories=args.categories,
        sweep_id=args.sweep_id, new=args.new, policy=policy_from_args(args), report_dir=args.report_dir,
        device=args.device, retry_failed=args.retry_failed,
    )
    return 0 if result.ok else 1
