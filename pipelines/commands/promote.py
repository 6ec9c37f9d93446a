"""``memseg promote``: the promotion gate for one category or all of them.

Moves the ``champion`` alias to the ``challenger`` version only when the challenger beats the
champion on the same held-out data by the margin and no guard metric regresses; prints the decision
and both sets of figures, which are also written as tags of the challenger version.
"""

from __future__ import annotations

import argparse

from pipelines.commands._common import add_policy_args, policy_from_args, tracking_uri

HELP = "promotion gate: move the champion alias to the challenger if it is better on held-out data"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("promote", help=HELP, description=HELP + ".")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--category", metavar="CAT", help="the category whose registered model to decide")
    which.add_argument("--all", action="store_true", help="every memseg-* registered model")
    which.add_argument("--model", metavar="NAME", help="a registered model by name (memseg-<dataset>-<category>)")
    p.add_argument("--dataset", metavar="NAME", help="with --category: the dataset part of the model name")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking server (default: $MLFLOW_TRACKING_URI, else runs/sweeps/mlflow.db)")
    p.add_argument("--data-root", metavar="DIR", help="dataset root on this machine (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="where to evaluate (default: auto)")
    p.add_argument("--force", action="store_true", help="decide again even if the challenger was decided before")
    add_policy_args(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.promotion import promote
    from pipelines.registry import registered_models, tracking_client

    uri = tracking_uri(args.tracking_uri)
    policy = policy_from_args(args)
    if args.model:
        names = [args.model]
    else:
        names = registered_models(tracking_client(uri), category=args.category, dataset=args.dataset)
    for name in names:
        print(promote(uri, name, policy, data_root=args.data_root, device=args.device, force=args.force).summary())
    return 0
