"""Flags shared by several subcommands, and what they turn into (configs, specs, the gate's policy, the store)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from memseg.config import MemSegConfig, load_config, parse_overrides

if TYPE_CHECKING:
    from pipelines.promotion import PromotionPolicy
    from sweeps.spec import SweepSpec


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


def spec_from_args(args: argparse.Namespace) -> tuple[SweepSpec, dict[str, object]]:
    """The sweep spec of ``--config`` with ``--set``, ``--data-root`` and ``--storage`` applied, and those changes.

    A data root other than the config's turns ``data.generate`` off (``"data.generate": None`` joins the changes).
    """
    from sweeps.spec import load_sweep_spec

    changes: dict[str, object] = dict(parse_overrides(args.overrides))
    if args.data_root:
        changes["data.root"] = args.data_root
    if args.storage:
        changes["storage.path"] = args.storage
    spec = load_sweep_spec(args.config)
    if spec.data.generate is not None and "data.root" in changes and changes["data.root"] != spec.data.root:
        # A root the user names holds their data: when it is missing (a typo), the sweep stops naming it
        # rather than generating a synthetic dataset there. Generation stays for the config's own root.
        changes["data.generate"] = None
    return (spec.with_changes(changes) if changes else spec), changes


def tracking_uri(explicit: str | None, storage_path: str | None = None) -> str:
    """The one resolution of the tracking store: the flag, ``$MLFLOW_TRACKING_URI``, else SQLite in the storage.

    ``storage_path`` None: the sweeps' default storage (``storage.path`` of a spec that does not set it).
    """
    from pipelines.tracking import resolve_tracking_uri
    from sweeps.spec import StorageSettings

    return resolve_tracking_uri(explicit, storage_path or StorageSettings().path)


def add_model_args(parser: argparse.ArgumentParser, folder_note: str = "") -> None:
    """``--checkpoint`` (a file, a folder or a registered model version) and ``--tracking-uri``."""
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH|URI",
        help=f"model.pt / best_model.pt, or a folder holding them (best_model.pt preferred{folder_note}), or a "
        "registered model version: models:/<name>@<alias> (e.g. @champion) or models:/<name>/<version>",
    )
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="with a models:/ checkpoint: the MLflow server holding the registry "
                        "(default: $MLFLOW_TRACKING_URI, else runs/sweeps/mlflow.db)")


@contextmanager
def checkpoint_file(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """The checkpoint file ``--checkpoint`` names and how to call it in messages.

    A ``models:/`` URI is downloaded from the registry (``--tracking-uri``) into a temporary folder
    that exists only inside the ``with`` block: load the model there.
    """
    from memseg.inference import resolve_checkpoint_file

    # Tested here rather than with pipelines.model_source, so a checkpoint path never imports MLflow.
    if args.checkpoint.startswith("models:/"):
        from pipelines.model_source import registered_checkpoint

        with registered_checkpoint(args.checkpoint, tracking_uri(args.tracking_uri)) as found:
            yield found
    else:
        path = resolve_checkpoint_file(args.checkpoint)
        yield path, str(path)


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The promotion gate's flags; unset = the policy's defaults."""
    g = parser.add_argument_group("promotion gate")
    g.add_argument("--metric", help="primary metric on the gate data (default: the model's selection metric "
                   "without val_, e.g. pixel_auroc)")
    g.add_argument("--margin", type=float, help="challenger must beat the champion by more than this (default: 0)")
    g.add_argument("--guard", dest="guard_metrics", nargs="*", metavar="METRIC",
                   help="metrics that must not regress (default: image_auroc pixel_aupro)")
    g.add_argument("--tolerance", dest="guard_tolerance", type=float,
                   help="largest accepted drop of a guard metric (default: 0.01)")
    g.add_argument("--floor", type=float, help="a category's first model needs metric >= floor (default: 0.5)")
    g.add_argument("--gate-data", dest="gate_data", choices=("val", "test"),
                   help="held-out data of the gate: val (default, leakage-free) or test")


def policy_from_args(args: argparse.Namespace) -> PromotionPolicy:
    from pipelines.promotion import make_policy

    guards = tuple(args.guard_metrics) if args.guard_metrics is not None else None
    return make_policy(metric=args.metric, margin=args.margin, guard_metrics=guards,
                       guard_tolerance=args.guard_tolerance, floor=args.floor, data=args.gate_data)
