"""Flags shared by the subcommands that take a config."""

from __future__ import annotations

import argparse

from memseg.config import MemSegConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="config file (defaults: the authors' values)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set synthesis.perlin_threshold=0.4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> MemSegConfig:
    return load_config(args.config, args.overrides)
