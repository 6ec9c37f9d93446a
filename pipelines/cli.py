"""The ``memseg`` command line.

Each subcommand lives in ``pipelines/commands/<name>.py`` and exposes ``register(subparsers)``.
Handlers import their layer lazily, so ``memseg train --help`` starts neither Ray nor MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from memseg.errors import MemSegError
from pipelines.errors import SweepInterrupted

# Order is the order in `memseg --help`.
COMMANDS = ("data", "train", "evaluate", "predict", "export", "bench", "sweep", "pipeline", "promote", "report")

EPILOG = """\
Start here:
  memseg data synth --out data/synthetic --size 128     # an MVTec-layout dataset to play with
  memseg train --set data.root=data/synthetic --set data.category=bottle --set train.steps=300
  memseg pipeline run --config demo                       # sweep -> register -> promote -> report
Every subcommand has its own --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memseg",
        description="MemSeg anomaly segmentation: data, training, evaluation, sweeps and model registry.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pipelines.commands.{name}").register(sub)
    return parser


CHATTY_LOGGERS = ("onnx_ir", "onnxscript")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        # The ONNX exporter's graph passes log every rewrite at INFO (hundreds of lines per export).
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except MemSegError as exc:
        print(f"memseg: error: {exc}", file=sys.stderr)
        return 1
    except SweepInterrupted as exc:
        print(f"\n{exc}", flush=True)
        sys.stderr.flush()
        os._exit(130)  # the study threads cannot be joined; Ray ends this job's trials with the driver
    except KeyboardInterrupt:
        print("memseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
