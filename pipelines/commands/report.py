"""``memseg report --sweep ID``: the sweep's leaderboard (CSV, Markdown, HTML) and Optuna plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.commands._common import tracking_uri

HELP = "leaderboard of a sweep next to the paper's figures, with Optuna plots, logged to MLflow"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help=HELP, description=HELP + ".")
    p.add_argument("--sweep", required=True, metavar="ID", help="the sweep id (printed by memseg sweep / pipeline)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/reports/<sweep id>)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking server (default: $MLFLOW_TRACKING_URI, else runs/sweeps/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only, log nothing to MLflow")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.report import default_out_dir, write_sweep_report

    uri = tracking_uri(args.tracking_uri)
    out = Path(args.out) if args.out else default_out_dir(args.sweep)
    report = write_sweep_report(uri, args.sweep, out, log_to_mlflow=not args.no_mlflow)
    print(report.files.markdown.read_text())
    print(f"written: {report.files.markdown}, {report.files.csv}, {report.files.html}")
    for cat in report.categories:
        if cat.plots:
            print(f"  {cat.result.category}: {', '.join(str(p) for p in cat.plots)}")
    return 0
