"""``memseg bench``: measure synthesis, data loading, training, inference and sweep overhead on this machine.

The handler parses flags and calls the two halves of the bench into one report:
:func:`memseg.bench.run.run_bench` (pure memseg) and :func:`sweeps.bench_overhead.record_sweep_overhead`
(a tiny local Ray sweep, tracked in a throw-away SQLite MLflow store like ``memseg sweep`` without a
tracking server). ``--compare`` calls :mod:`memseg.bench.compare`. ``memseg bench sweep-scale`` is its
own section with its own flags (:mod:`pipelines.bench_sweep_scale`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweeps.bench_overhead import Tracking
    from sweeps.driver import CategoryPlan

HELP = "measure throughput and latency of synthesis, data loading, training, inference and sweeps"
DESCRIPTION = """\
Measure the pipeline on this machine. Each figure is the median of repeated runs after a warm-up,
with min and max. The data is a generated MVTec-layout category written to a temporary folder
(images of --source-size px, decoded once and resized to --size), and the backbone is randomly
initialised by default (--weights none), so nothing is downloaded.

Figures: synthetic samples/s per process (texture and structural sources, the config's mix),
normal samples/s, Perlin masks/s; DataLoader samples/s with 0, 1 and N workers; seconds per
training step at batch 8 (4 normal + 4 synthetic), images/s, peak host memory (and peak GPU
memory on CUDA); inference images/s at batch 1 and 8 and batch-1 latency p50/p95 with the memory
comparison; memory-bank build time for N = 30; and the share of a smoke-sweep trial's wall time
spent outside training steps.
"""
EPILOG = """\
examples:
  memseg bench                                       # CPU, 256 px, full run, table on stdout
  memseg bench --quick --size 64 --json out.json     # CI smoke run
  memseg bench --device cuda --json bench_cuda.json  # on a GPU node
  memseg bench --threads 1 --clock cpu --skip-sweep  # compare commits on a busy shared machine
  memseg bench --sections inference --skip-sweep --set model.memory_match=nearest   # time another config
  memseg bench --compare before.json after.json      # what changed, beyond the min-max noise
  memseg bench --compare main.json pr.json --max-regression 10   # exit 1 on a >10 % regression
  memseg bench sweep-scale --sizes 2x16x8 --json scale.json       # the sweep machinery at scale, simulated
                                                                  # (memseg bench sweep-scale --help)

On a machine shared with other jobs, wall-clock figures swing with the load; --threads 1
--clock cpu times one thread's CPU time instead, which approximates an idle core (the DataLoader
figures stay in wall time). The JSON records the machine (CPU model, cores, torch, device, git
commit, load average) so runs can be compared across machines and commits.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N) (default: cpu)")
    p.add_argument("--size", type=int, default=256, help="training/inference image size in px (default: 256)")
    p.add_argument("--source-size", type=int, default=384, help="size of the image files decoded once (default: 384)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter runs (CI)")
    p.add_argument("--repeats", type=int, metavar="N", help="timed runs per figure (default: 5; --quick: 3)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs before them (default: 1)")
    p.add_argument("--weights", default="none", help="model.backbone_weights: none (default), imagenet or a file")
    p.add_argument("--category", default="bottle", help="generated category (its foreground rule applies)")
    p.add_argument("--workers", type=int, metavar="N", help="N of the N-worker DataLoader (default: usable CPUs)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time (default) or CPU time")
    p.add_argument("--dtd-root", metavar="DIR", help="DTD root for texture sources (default: procedural)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="a config change for every figure, e.g. model.memory_match=nearest (repeatable)")
    p.add_argument(
        "--sections", nargs="+", metavar="NAME",
        help="any of synthesis loader training inference deployment (default: all; deployment: the exported "
        "graph in onnxruntime/OpenVINO, needs the export extra)",
    )
    p.add_argument("--skip-sweep", action="store_true", help="do not measure the sweep overhead (no Ray)")
    p.add_argument("--sweep-trials", type=int, default=2, metavar="N", help="trials of the overhead sweep (default: 2)")
    p.add_argument("--sweep-steps", type=int, default=8, metavar="N", help="steps per overhead trial (default: 8)")
    p.add_argument(
        "--sweep-size", type=int, default=64, metavar="PX", help="image size of the overhead sweep (default: 64)"
    )
    p.add_argument("--no-mlflow", action="store_true", help="leave MLflow tracking out of the overhead sweep")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument(
        "--compare", nargs=2, metavar=("BASE", "NEW"),
        help="measure nothing; compare two --json reports figure by figure (change of the medians, "
        "counted only where the min-max ranges do not overlap)",
    )
    p.add_argument(
        "--max-regression", type=float, metavar="PCT",
        help="with --compare: exit 1 when a figure is worse beyond noise by more than PCT percent",
    )
    p.set_defaults(handler=handle)
    sections = p.add_subparsers(dest="bench_section", metavar="{sweep-scale}")
    _register_sweep_scale(sections)


SCALE_HELP = "the paper sweep's machinery at scale on a simulated GPU cluster, against bare Ray Tune"
SCALE_DESCRIPTION = """\
Run the production sweep stage (one Tuner + Optuna/TPE + ASHA per category, MLflow tracking against a
real `mlflow server` with a SQLite backend, the status table, storage pruning) with simulated trials
(they sleep --step-seconds per step and report a validation curve that depends on their parameters;
no torch) on Ray nodes started on this machine that declare GPUs they do not have (a CPU head plus
one node per 8 GPUs, --num-gpus 8 --num-cpus 16, object store 100 MB). A trial holds 1 GPU: a slot.
Side by side, bare Ray Tune (one Tuner, random search, Tune's ASHA; no Optuna, MLflow, status table
or pruning) runs the same simulated trials on the same cluster. Then ours again, killed with SIGKILL
at half its wall time and continued with --resume.

Figures per size: wall time and the ideal (busy slot-seconds / slots); slot utilisation (busy
slot-seconds / (slots x wall)); time to the first trial running; idle tail (last trial start to last
trial end); driver CPU seconds and peak memory (per 100 trials); MLflow requests per trial and their
p50/p95 latency (a timing proxy in front of the server); Tune storage bytes per trial; trials
finished/pruned/failed; after the kill: trials lost, rerun, duplicated (should be 0, 0, 0); ours
over bare Tune; and the paper sweep (15 x 32 trials, 2700 steps) projected on 16 and 32 GPUs.
Method and measured figures: docs/performance.md, "Sweep at scale (simulated)". Exits 1 when a run
lost, reran or duplicated a trial, or left MLflow incomplete.
"""
SCALE_EPILOG = """\
examples:
  memseg bench sweep-scale --sizes 2x8x4 --steps 6 --step-seconds 0.5 --json ci.json   # about 3 min
  memseg bench sweep-scale --sizes 2x16x8 4x32x8 --json scale.json
  memseg bench sweep-scale --sizes 8x48x8 --no-crash --project-step-s 0.0209
"""


def _register_sweep_scale(sections: argparse._SubParsersAction) -> None:
    p = sections.add_parser("sweep-scale", help=SCALE_HELP, description=SCALE_DESCRIPTION, epilog=SCALE_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["2x16x8"], metavar="CxSxT",
                   help="sizes to run: categories x GPU slots x trials per category (default: 2x16x8)")
    p.add_argument("--steps", type=int, default=12, metavar="N", help="step budget of a trial (default: 12)")
    p.add_argument("--eval-interval", type=int, default=2, metavar="N", help="steps between reports (default: 2)")
    p.add_argument("--step-seconds", type=float, default=1.0, metavar="S",
                   help="simulated seconds per step (default: 1.0)")
    p.add_argument("--max-concurrent", type=int, default=8, metavar="N",
                   help="running trials per category at most (default: 8, the paper's)")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare-Tune run")
    p.add_argument("--no-crash", action="store_true", help="skip the kill -9 / --resume run")
    p.add_argument("--project-step-s", type=float, default=0.0209, metavar="S",
                   help="seconds per training step for the paper-sweep projection (default: 0.0209, one H200)")
    p.add_argument("--heatmaps", type=int, metavar="N",
                   help="heat maps per simulated checkpoint, logged to MLflow as a real trial's (default: the "
                   "paper spec's eval.heatmap_samples, 4)")
    p.add_argument("--reuse-actors", action="store_true",
                   help="start a trial in the worker process of one that ended (Tune's reuse_actors), ours and "
                   "bare Tune alike (default: the paper spec's cluster.reuse_actors, false)")
    p.add_argument("--workdir", metavar="DIR", help="keep data, storage, logs and MLflow here (default: a temp dir)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(handler=handle_sweep_scale)


def handle_sweep_scale(args: argparse.Namespace) -> int:
    import json

    from pipelines.bench_sweep_scale import ScaleSettings, format_report, parse_size, problems, run_sweep_scale

    settings = ScaleSettings(
        sizes=tuple(parse_size(s) for s in args.sizes), steps=args.steps, eval_interval=args.eval_interval,
        step_seconds=args.step_seconds, max_concurrent=args.max_concurrent, crash=not args.no_crash,
        baseline=not args.no_baseline, project_step_s=args.project_step_s, workdir=args.workdir,
        heatmaps=args.heatmaps, reuse_actors=True if args.reuse_actors else None,
    )

    def log(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    report = run_sweep_scale(settings, log)
    print(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        print(f"\nJSON: {path}")
    wrong = problems(report)
    for line in wrong:
        print(f"PROBLEM {line}", file=sys.stderr)
    return 1 if wrong else 0


def handle(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(*args.compare, max_regression=args.max_regression)
    if args.max_regression is not None:
        print("memseg bench: --max-regression goes with --compare BASE NEW", file=sys.stderr)
        return 2
    from memseg.bench.report import format_table
    from memseg.bench.run import run_bench
    from memseg.bench.workload import BenchSettings
    from sweeps.bench_figures import OVERHEAD

    settings = BenchSettings(
        device=args.device, size=args.size, source_size=args.source_size, quick=args.quick, repeats=args.repeats,
        warmup=args.warmup, weights=args.weights, category=args.category, workers=args.workers,
        threads=args.threads, dtd_root=args.dtd_root, clock=args.clock, overrides=tuple(args.overrides),
    )

    def log(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    report = run_bench(settings, sections=args.sections, log=log)
    ok = True
    if args.skip_sweep:
        report.skip(OVERHEAD, "--skip-sweep")
    else:
        from sweeps import bench_overhead  # Ray: only when the sweep section runs

        with tempfile.TemporaryDirectory(prefix="memseg-bench-sweep-") as tmp:
            ok = bench_overhead.record_sweep_overhead(
                report, tmp, trials=args.sweep_trials, steps=args.sweep_steps, size=args.sweep_size,
                step_repeats=2 if args.quick else 3,
                tracking=None if args.no_mlflow else _mlflow_tracking(Path(tmp) / "mlflow"), log=log,
            )
    print(format_table(report))
    if args.json:
        path = report.write_json(args.json)
        print(f"\nJSON: {path}")
    return 0 if ok else 1


def _compare(base_path: str, new_path: str, *, max_regression: float | None) -> int:
    from memseg.bench.compare import compare_reports, format_comparison, load_report, regressions
    from memseg.bench.run import declared_figures
    from sweeps.bench_figures import FIGURES as SWEEP_FIGURES

    base, new = load_report(base_path), load_report(new_path)
    changes = compare_reports(base, new, [*declared_figures(), *SWEEP_FIGURES])
    print(f"base {base_path}\nnew  {new_path}\n")
    print(format_comparison(base, new, changes))
    if max_regression is None:
        return 0
    worse = regressions(changes, max_regression / 100)
    for c in worse:
        print(f"REGRESSION {c.name}: {c.change:+.1%} ({c.unit}), beyond the {max_regression:g} % allowed")
    return 1 if worse else 0


def _mlflow_tracking(folder: Path) -> Tracking:
    """MLflow tracking of the overhead sweep in a SQLite store in ``folder``, as ``memseg sweep`` tracks."""
    from pipelines import tracking as mlt
    from sweeps.bench_overhead import TrackingHooks

    def tracking(sweep_id: str, plans: list[CategoryPlan]) -> TrackingHooks:
        tracker = mlt.SweepTracking(mlt.local_store_uri(folder), sweep_id, spec_name="bench-overhead",
                                    artifact_location=(folder / "artifacts").as_uri())
        callbacks = {p.category: [tracker.callback(p)] for p in plans}
        return TrackingHooks(
            callbacks_for=lambda plan: callbacks[plan.category],
            close=lambda result: mlt.close_sweep(tracker, plans, result.categories),
        )

    return tracking
