"""``memseg bench sweep-scale``: the paper sweep's machinery at scale, on a simulated GPU cluster on this machine.

Method (docs/performance.md, "Sweep at scale (simulated)"):

* **Cluster.** A Ray head (1 CPU, no GPU, as a CPU-only head) plus ``ceil(slots / 8)`` worker nodes
  started with ``ray start --address`` on this machine, each declaring GPUs it does not have
  (``--num-gpus 8 --num-cpus 16``, object store capped). A trial asks for 1 CPU and 1 GPU, so a
  *slot* is a GPU. The drivers join it by address, as in production.
* **Ours.** A separate driver process (``python -m pipelines.bench_sweep_scale drive``) runs the
  production sweep stage (:func:`pipelines.sweep_stage.run_tracked_sweep`: one Tuner + Optuna/TPE +
  ASHA per category, MLflow tracking with its writer thread and reconciliation, the status table,
  storage pruning) on ``sweeps/configs/paper.yaml`` shrunk to the size asked for (categories, slots,
  trials per category, a short step budget), with only the trainable replaced
  (:mod:`sweeps.simulated_trial`). The MLflow server is a real ``mlflow server`` with a SQLite backend;
  the bench puts a small timing proxy in front of it (:class:`TimingProxy`), which counts the requests
  and times each one from forwarding it to the server's last response byte.
  ``budget.measure_trials_on_test`` is off: a simulated checkpoint holds no model to measure.
* **Baseline.** Another driver process (:mod:`sweeps.bench_scale_baseline`) runs one bare ``ray.tune.Tuner`` over the
  same trials (every category's ``trials`` as a grid axis, Tune's random search over the same learning
  rate and synthesis ranges, Tune's own ASHA with the same rungs, the same per-trial resources and
  the same concurrency): no Optuna, no MLflow, no status table, no storage pruning.
* **Timeline.** The simulated trials append their start, reports and end to a JSON-lines file each,
  with the wall clock (they share this machine's clock with the bench); a trial is *busy* from the
  start of its trainable to its last report. The bench samples each driver's CPU time and memory
  from ``/proc`` while it runs.
* **Crash.** A second run of ours at the same size is killed (SIGKILL) at half the first run's wall
  time and continued with ``--resume``; then Tune's records, MLflow's runs and the trials' own
  timelines are compared: trials lost, rerun, duplicated.

Figures per run: wall time and the ideal (busy slot-seconds / slots), slot utilisation (busy
slot-seconds / (slots x wall)), time to the first trial running, the idle tail (last trial start to
last trial end), driver CPU seconds and peak memory (per 100 trials), MLflow requests per trial and
their p50/p95 latency, Tune storage bytes per trial, trials finished/pruned/failed. And a projection
of the paper sweep (15 x 32 trials, 2700 steps) on 16 and 32 GPUs from the measured idle slot-seconds
per trial, ASHA's share of the full step budget and a given seconds per step.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from mlflow import MlflowClient

from memseg.bench.machine import machine_info
from memseg.errors import ConfigError
from pipelines import schema, sweep_stage, tracking
from sweeps.bench_scale_baseline import BaselineSettings
from sweeps.dataset import ensure_dataset, preflight_dataset
from sweeps.local_cluster import HOST, LocalRayCluster, NodeSpec, free_port, start_local_cluster, stop_process_group
from sweeps.simulated_trial import SimulatedTrial, simulated_factory
from sweeps.spec import SweepSpec, load_sweep_spec
from sweeps.status import classify

logger = logging.getLogger(__name__)

GPUS_PER_NODE = 8
CPUS_PER_NODE = 16
OBJECT_STORE_MB = 100
PAPER_CATEGORIES = 15
PAPER_TRIALS = 32
PAPER_STEPS = 2700
# docs/performance.md, "GPU run": seconds per training step at 256 px, batch 8, on one H200.
H200_STEP_S = 0.0209
OURS_MODULE = "pipelines.bench_sweep_scale"
BASELINE_MODULE = "sweeps.bench_scale_baseline"

Log = Callable[[str], None]


# --- sizes and settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSize:
    """One size of the simulation: categories run at once, GPU slots of the cluster, trials per category."""

    categories: int
    slots: int
    trials: int

    @property
    def total_trials(self) -> int:
        return self.categories * self.trials

    @property
    def label(self) -> str:
        return f"{self.categories}x{self.slots}x{self.trials}"


def parse_size(text: str) -> ScaleSize:
    """``CATEGORIESxSLOTSxTRIALS`` (e.g. ``2x16x8``).

    Raises:
        ConfigError: naming the value when it is not three positive integers, or has more than 15 categories.
    """
    parts = text.lower().split("x")
    try:
        cats, slots, trials = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--sizes: {text!r} is not CATEGORIESxSLOTSxTRIALS (e.g. 2x16x8)") from None
    if min(cats, slots, trials) < 1 or cats > PAPER_CATEGORIES:
        raise ConfigError(f"--sizes: {text!r}: each number must be >= 1 and categories <= {PAPER_CATEGORIES}")
    return ScaleSize(cats, slots, trials)


@dataclass(frozen=True)
class ScaleSettings:
    """How the simulation runs (the CLI's flags).

    Attributes:
        sizes: the sizes to run, in order.
        steps: step budget of a trial.
        eval_interval: steps between reports.
        step_seconds: simulated seconds per step.
        max_concurrent: running trials per category at most (the paper's 8).
        crash: also run ours killed at half-time and resumed, per size.
        baseline: also run bare Tune, per size.
        project_step_s: seconds per step for the paper-sweep projection.
        workdir: where data, storage, logs and the MLflow store go (None: a temporary folder, removed).
        heatmaps: heat maps per checkpoint (``eval.heatmap_samples``; None: the paper spec's).
        reuse_actors: Tune's actor reuse for ours and bare Tune alike (None: the paper spec's).
    """

    sizes: tuple[ScaleSize, ...]
    steps: int = 12
    eval_interval: int = 2
    step_seconds: float = 1.0
    max_concurrent: int = 8
    crash: bool = True
    baseline: bool = True
    project_step_s: float = H200_STEP_S
    workdir: str | None = None
    heatmaps: int | None = None
    reuse_actors: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "--steps: must be >= 1"),
            (1 <= self.eval_interval <= self.steps, "--eval-interval: must be between 1 and --steps"),
            (self.step_seconds > 0, "--step-seconds: must be > 0"),
            (self.max_concurrent >= 1, "--max-concurrent: must be >= 1"),
            (self.project_step_s > 0, "--project-step-s: must be > 0"),
            (self.heatmaps is None or 0 <= self.heatmaps <= 64, "--heatmaps: must be between 0 and 64"),
        ]
        wrong = [message for ok, message in checks if not ok]
        if wrong:
            raise ConfigError("; ".join(wrong))


def scale_spec(size: ScaleSize, settings: ScaleSettings, root: Path) -> SweepSpec:
    """``paper.yaml`` shrunk to ``size``: its first categories, short trials on small generated data, CPU-only
    data checks (the trials never read it), 1 CPU + 1 GPU per trial, storage and data under ``root``."""
    paper = load_sweep_spec("paper")
    evals = max(1, settings.steps // settings.eval_interval)
    return paper.with_changes({
        "name": "sweep-scale",
        "categories": list(paper.categories[: size.categories]),
        "base.data.image_size": 64,
        "base.data.texture_source": "procedural",
        "base.data.dtd_root": None,
        "base.data.num_workers": 0,
        "base.data.val_min_images": 2,
        "base.data.val_anomalies_per_image": 1,
        "base.model.backbone_weights": "none",
        "base.train.steps": settings.steps,
        "base.train.eval_interval": settings.eval_interval,
        "base.train.device": "cpu",
        "data.root": str(root / "data"),
        "data.generate": {"size": 64, "n_train": 12, "n_test_good": 3, "n_test_defect": 3, "seed": 0},
        "search.num_samples": size.trials,
        "search.max_concurrent": settings.max_concurrent,
        "search.n_startup_trials": max(1, min(paper.search.n_startup_trials, size.trials // 2)),
        # The paper's grace period is 3 of 27 evaluations; the same share of the shortened budget.
        "scheduler.grace_period_evals": max(1, round(evals * paper.scheduler.grace_period_evals / 27)),
        "resources.cpu": 1,
        "resources.gpu": 1,
        "budget.time_budget_s": None,
        "budget.measure_trials_on_test": False,
        "storage.path": str(root / "storage"),
        "cluster.status_interval_s": 30,
        **({"base.eval.heatmap_samples": settings.heatmaps} if settings.heatmaps is not None else {}),
        **({"cluster.reuse_actors": settings.reuse_actors} if settings.reuse_actors is not None else {}),
    })


# --- the simulated cluster ---------------------------------------------------------------------------


def start_sim_cluster(slots: int, log: Log) -> LocalRayCluster:
    """A CPU-only head plus ``ceil(slots / 8)`` worker nodes declaring ``slots`` GPUs in all.

    Raises:
        RuntimeError: a node did not come up (with the tail of its log).
    """
    nodes = [NodeSpec(cpus=1)]
    gpus_left = slots
    while gpus_left > 0:
        nodes.append(NodeSpec(cpus=CPUS_PER_NODE, gpus=min(GPUS_PER_NODE, gpus_left)))
        gpus_left -= GPUS_PER_NODE
    log(f"cluster: head + {len(nodes) - 1} worker node(s), {slots} simulated GPUs")
    return start_local_cluster(nodes, object_store_mb=OBJECT_STORE_MB, temp_prefix="rs")


# --- MLflow server and its timing proxy ---------------------------------------------------------------


@dataclass
class MlflowServer:
    """A real ``mlflow server`` (SQLite) in its own process group."""

    uri: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process_group(self.proc, grace_s=20.0)


def start_mlflow_server(root: Path) -> MlflowServer:
    """``mlflow server`` with a SQLite backend and proxied artifacts under ``root`` (one worker, loopback only).

    Raises:
        RuntimeError: it exited or was not healthy within two minutes (with the tail of its log).
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://{HOST}:{port}"
    log = root / "server.log"
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--host", HOST, "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    server = MlflowServer(uri, proc, log)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server at {uri} not healthy after 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        # A driver killed on purpose (the crash run) drops its connections: not an error of the proxy.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class TimingProxy:
    """An HTTP proxy in front of the tracking server that records each request's path, status and server time.

    The time is taken from sending the request upstream to reading the last byte of the answer, on a
    keep-alive connection per proxy thread, so it is the server's latency plus one loopback hop.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.records: list[tuple[str, str, int, float]] = []
        self._lock = threading.Lock()
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                conn = getattr(local, "conn", None)
                for attempt in (0, 1):
                    if conn is None:
                        conn = http.client.HTTPConnection(host, int(port), timeout=300)
                        local.conn = conn
                    started = time.perf_counter()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        conn = local.conn = None
                        if attempt:
                            self.send_error(502)
                            return
                seconds = time.perf_counter() - started
                with proxy._lock:
                    proxy.records.append((self.command, self.path.split("?")[0], resp.status, seconds))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        self.server = _ProxyServer((HOST, free_port()), Handler)
        self.uri = f"http://{HOST}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="mlflow-proxy")
        self._thread.start()

    def take(self) -> list[tuple[str, str, int, float]]:
        """The records so far, cleared."""
        with self._lock:
            out, self.records = self.records, []
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_figures(records: Sequence[tuple[str, str, int, float]], trials: int) -> dict[str, object]:
    """Requests per trial, p50/p95/max latency (ms), server errors, and the busiest endpoints."""
    times = sorted(r[3] for r in records)
    by_path: dict[str, int] = {}
    for _method, path, _status, _s in records:
        # Artifact uploads carry the file's path: counted together.
        key = "/api/2.0/mlflow-artifacts/artifacts/*" if "/mlflow-artifacts/artifacts/" in path else path
        by_path[key] = by_path.get(key, 0) + 1
    return {
        "mlflow_requests": len(records),
        "mlflow_requests_per_trial": len(records) / max(1, trials),
        "mlflow_p50_ms": 1000 * _quantile(times, 0.5),
        "mlflow_p95_ms": 1000 * _quantile(times, 0.95),
        "mlflow_max_ms": 1000 * times[-1] if times else math.nan,
        "mlflow_server_errors": sum(1 for r in records if r[2] >= 500),
        "mlflow_requests_by_path": dict(sorted(by_path.items(), key=lambda kv: -kv[1])[:8]),
    }


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --- driver processes ----------------------------------------------------------------------------------


@dataclass
class DriverRun:
    """A driver process: when it started and ended (wall clock), how it ended, its CPU and memory samples."""

    started: float
    ended: float = math.nan
    returncode: int | None = None
    killed: bool = False
    cpu_total_s: float = math.nan
    peak_rss_total_mb: float = math.nan
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (wall clock, CPU s, RSS MB)

    def cpu_at(self, t: float) -> float:
        """CPU seconds the driver had used by wall-clock time ``t`` (the last sample before it)."""
        before = [cpu for when, cpu, _rss in self.samples if when <= t]
        return before[-1] if before else (self.samples[0][1] if self.samples else math.nan)

    def peak_rss_until(self, t: float) -> float:
        values = [rss for when, _cpu, rss in self.samples if when <= t]
        return max(values) if values else math.nan


def _proc_sample(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, RSS MB) of a live process from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)
    return cpu, rss


def run_driver(
    module: str, args: Sequence[str], *, env: Mapping[str, str], log_path: Path, kill_after_s: float | None = None,
    timeout_s: float = 3600.0,
) -> DriverRun:
    """Run a driver process to its end (or SIGKILL it after ``kill_after_s``), sampling CPU and RSS every 0.2 s.

    Raises:
        RuntimeError: it ran past ``timeout_s`` (then it is killed).
    """
    with log_path.open("w") as out:
        run = DriverRun(started=time.time())
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            run.ended = time.time()
            run.returncode = os.waitstatus_to_exitcode(status)
            proc.returncode = run.returncode
            run.cpu_total_s = usage.ru_utime + usage.ru_stime
            run.peak_rss_total_mb = usage.ru_maxrss / 1024
            return run
        sample = _proc_sample(proc.pid)
        if sample is not None:
            run.samples.append((time.time(), *sample))
        if kill_after_s is not None and not run.killed and time.time() - run.started >= kill_after_s:
            os.kill(proc.pid, signal.SIGKILL)
            run.killed = True
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"driver {module} ran past {timeout_s:.0f} s (log: {log_path})")
        time.sleep(0.2)


# --- timelines ------------------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One run of a trial's trainable: where it started (step) and its events."""

    trial_id: str
    start: float
    start_step: int
    last: float
    last_step: int
    ended: bool = False
    replay: bool = False
    persisted_step: int = 0  # the last step whose checkpoint ``tune.report`` had stored


def read_invocations(events_dir: Path) -> dict[str, list[Invocation]]:
    """Every trial's trainable runs, in order, from the simulated trials' JSON-lines files."""
    out: dict[str, list[Invocation]] = {}
    for path in sorted(events_dir.glob("*.jsonl")):
        trial_id = path.stem
        runs: list[Invocation] = []
        for line in path.read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            t = float(ev["t"])
            if ev["event"] == "replay":
                runs.append(Invocation(trial_id, t, -1, t, -1, ended=True, replay=True))
            elif ev["event"] == "start":
                runs.append(Invocation(trial_id, t, int(ev["step"]), t, int(ev["step"])))
            elif runs and ev["event"] == "persisted":
                runs[-1].persisted_step = int(ev["step"])
            elif runs:
                runs[-1].last, runs[-1].last_step = t, int(ev["step"])
                runs[-1].ended = runs[-1].ended or ev["event"] == "end"
        out[trial_id] = runs
    return out


def timeline_figures(runs: Mapping[str, Sequence[Invocation]], started: float, slots: int, trials: int,
                     full_trial_s: float) -> dict[str, float]:
    """Wall time from the driver's start to the last trial's last report, against the ideal; utilisation; tails."""
    worked = [r for rs in runs.values() for r in rs if not r.replay]
    if not worked:
        return {"trials_started": 0}
    busy = sum(r.last - r.start for r in worked)
    first, last_start = min(r.start for r in worked), max(r.start for r in worked)
    last_end = max(r.last for r in worked)
    wall = last_end - started
    return {
        "trials_started": len(runs),
        "wall_s": wall,
        "ideal_s": busy / slots,
        "wall_over_ideal": wall / (busy / slots) if busy else math.nan,
        "busy_slot_s": busy,
        "slot_utilisation": busy / (slots * wall),
        # From the first trial's start: the driver's own start-up (imports, planning, data check) left out.
        "sweep_window_s": last_end - first,
        "window_utilisation": busy / (slots * (last_end - first)) if last_end > first else math.nan,
        "time_to_first_trial_s": first - started,
        "idle_tail_s": last_end - last_start,
        "idle_slot_s_per_trial": (slots * wall - busy) / max(1, trials),
        "step_budget_share": busy / (max(1, trials) * full_trial_s),
        "first_trial_start": first,
        "last_trial_end": last_end,
    }


def driver_figures(run: DriverRun, until: float, trials: int, since: float | None = None) -> dict[str, float]:
    """The driver's CPU and memory until the last trial's end, in the sweep window (from ``since``, the first
    trial's start: the start-up left out), and in all."""
    cpu = run.cpu_at(until)
    window = cpu - run.cpu_at(since) if since is not None else math.nan
    return {
        "driver_cpu_s": cpu,
        "driver_cpu_s_per_100_trials": 100 * cpu / max(1, trials),
        "driver_cpu_s_window": window,
        "driver_cpu_s_window_per_100_trials": 100 * window / max(1, trials),
        "driver_cpu_s_total": run.cpu_total_s,
        "driver_peak_rss_mb": run.peak_rss_until(until),
        "driver_peak_rss_mb_total": run.peak_rss_total_mb,
        "driver_exit_s": run.ended - run.started,
    }


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- ours: the production sweep stage with simulated trials ----------------------------------------------


def _write_spec(spec: SweepSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    return path


def drive(spec_path: str, *, tracking_uri: str, sweep_id: str, events: str, step_seconds: float, resume: bool,
          out: str) -> int:
    """The ``drive`` entry point: the production sweep stage with the simulated trainable; a summary to ``out``."""
    spec = load_sweep_spec(spec_path)
    tracked = sweep_stage.run_tracked_sweep(
        spec, tracking_uri=tracking_uri, resume=resume, sweep_id=sweep_id,
        trainable_factory=simulated_factory(step_seconds, events), stream=sys.stdout,
    )
    Path(out).write_text(json.dumps({
        "ok": tracked.ok, "untracked": list(tracked.untracked), "experiment_id": tracked.experiment_id,
        "counts": {c: r.counts() for c, r in tracked.result.categories.items()},
    }))
    return 0 if tracked.ok else 1


@dataclass(frozen=True)
class TuneTrial:
    """A trial as Tune recorded it: status, outcome, the distinct steps it reported."""

    category: str
    trial_id: str
    status: str
    outcome: str
    steps: tuple[int, ...]


@dataclass(frozen=True)
class TrialRun:
    """A trial run as MLflow holds it: status and the steps of the Tune metric's points (repeats kept)."""

    run_id: str
    status: str
    steps: tuple[int, ...]


def tune_records(spec: SweepSpec, sweep_id: str) -> list[TuneTrial]:
    """Every trial Tune recorded for the sweep (its latest experiment state per category)."""
    root = Path(spec.storage.path) / sweep_id
    budget = spec.base_config().train.steps
    out = []
    for category in spec.categories:
        for t in tracking.trials_from_storage(str(root / category)):
            steps = tuple(sorted({int(r["step"]) for r in t.results if "step" in r}))
            out.append(TuneTrial(category, t.trial_id, t.status, classify(t.status, steps[-1] if steps else None,
                                                                          budget), steps))
    return out


def mlflow_records(uri: str, experiment_id: str, sweep_id: str, metric: str) -> dict[tuple[str, str], list[TrialRun]]:
    """Every trial run MLflow holds for the sweep, by (category, trial id)."""
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id], f"tags.{schema.TAG_SWEEP} = '{sweep_id}'", max_results=50000)
    out: dict[tuple[str, str], list[TrialRun]] = {}
    for run in runs:
        trial = run.data.tags.get(schema.TAG_TRIAL)
        if not trial:
            continue  # a parent run
        history = client.get_metric_history(run.info.run_id, metric)
        key = (run.data.tags.get(schema.TAG_CATEGORY, ""), trial)
        out.setdefault(key, []).append(TrialRun(run.info.run_id, run.info.status, tuple(int(m.step) for m in history)))
    return out


def tracking_check(tune: Sequence[TuneTrial], mlflow: Mapping[tuple[str, str], Sequence[TrialRun]]) -> dict[str, int]:
    """What MLflow lacks or holds twice against Tune's records."""
    missing_runs = unfinished = missing_points = duplicated_runs = repeated_points = 0
    for t in tune:
        runs = mlflow.get((t.category, t.trial_id), [])
        if not runs:
            missing_runs += 1
            continue
        duplicated_runs += len(runs) - 1
        run = runs[0]
        if t.status in ("TERMINATED", "ERROR") and run.status == "RUNNING":
            unfinished += 1
        if set(t.steps) - set(run.steps):
            missing_points += 1
        repeated_points += len(run.steps) - len(set(run.steps))
    return {"mlflow_missing_runs": missing_runs, "mlflow_unfinished_runs": unfinished,
            "mlflow_trials_missing_points": missing_points, "mlflow_duplicated_runs": duplicated_runs,
            "mlflow_repeated_points": repeated_points}


def outcome_counts(tune: Sequence[TuneTrial]) -> dict[str, int]:
    counts = {f"trials_{o}": 0 for o in ("finished", "pruned", "failed")}
    for t in tune:
        counts[f"trials_{t.outcome}"] = counts.get(f"trials_{t.outcome}", 0) + 1
    return counts


@dataclass
class SizeContext:
    """What every run of one size shares: the cluster, the MLflow server and its proxy, the spec, the folders."""

    size: ScaleSize
    settings: ScaleSettings
    root: Path
    cluster: LocalRayCluster
    spec_path: Path
    spec: SweepSpec
    server: MlflowServer | None = None
    proxy: TimingProxy | None = None

    @property
    def full_trial_s(self) -> float:
        return self.settings.steps * self.settings.step_seconds


def run_ours(ctx: SizeContext, name: str, log: Log, *, kill_after_s: float | None = None) -> dict[str, object]:
    """One run of our stack (killed and resumed when ``kill_after_s`` is given); its figures."""
    assert ctx.proxy is not None and ctx.server is not None
    folder = ctx.root / name
    events = folder / "events"
    events.mkdir(parents=True)
    sweep_id = f"scale-{ctx.size.label}-{name}"
    base = ["drive", "--spec", str(ctx.spec_path), "--tracking-uri", ctx.proxy.uri, "--sweep-id", sweep_id,
            "--events", str(events), "--step-seconds", str(ctx.settings.step_seconds)]
    ctx.proxy.take()
    log(f"{ctx.size.label} {name}: our driver" + (f", killed after {kill_after_s:.0f} s" if kill_after_s else ""))
    first = run_driver(OURS_MODULE, [*base, "--out", str(folder / "result.json")], env=ctx.cluster.env,
                       log_path=folder / "driver.log", kill_after_s=kill_after_s)
    runs = [first]
    if kill_after_s is not None:
        if not first.killed:
            raise RuntimeError(f"{ctx.size.label} {name}: the driver ended before the kill at {kill_after_s:.0f} s")
        log(f"{ctx.size.label} {name}: killed; resuming")
        runs.append(run_driver(OURS_MODULE, [*base, "--resume", "--out", str(folder / "result.json")],
                               env=ctx.cluster.env, log_path=folder / "driver-resume.log"))
    records = ctx.proxy.take()
    last = runs[-1]
    if last.returncode not in (0, 1):
        raise RuntimeError(f"{ctx.size.label} {name}: the driver failed ({last.returncode}); see {folder}/driver*.log")
    summary = json.loads((folder / "result.json").read_text())
    tune = tune_records(ctx.spec, sweep_id)
    metric = f"best_{ctx.spec.base_config().eval.selection_metric}"
    mlflow = mlflow_records(ctx.server.uri, str(summary["experiment_id"]), sweep_id, metric)
    invocations = read_invocations(events)
    out: dict[str, object] = {"sweep_id": sweep_id, "ok": summary["ok"], "untracked": summary["untracked"]}
    out.update(outcome_counts(tune))
    out.update(tracking_check(tune, mlflow))
    out.update(request_figures(records, ctx.size.total_trials))
    out["storage_bytes_per_trial"] = tree_bytes(Path(ctx.spec.storage.path) / sweep_id) / ctx.size.total_trials
    out["logs"] = [str(folder / "driver.log")] + ([str(folder / "driver-resume.log")] if len(runs) > 1 else [])
    if kill_after_s is None:
        figures = timeline_figures(invocations, first.started, ctx.size.slots, ctx.size.total_trials,
                                   ctx.full_trial_s)
        out.update(figures)
        out.update(driver_figures(first, figures.get("last_trial_end", first.ended), ctx.size.total_trials,
                                  figures.get("first_trial_start")))
    else:
        out.update(crash_figures(tune, mlflow, invocations, first.ended, ctx.size.trials, ctx.size.categories))
        out["killed_after_s"] = kill_after_s
    return out


def crash_figures(tune: Sequence[TuneTrial], mlflow: Mapping[tuple[str, str], Sequence[TrialRun]],
                  invocations: Mapping[str, Sequence[Invocation]], killed_at: float,
                  trials_per_category: int, categories: int) -> dict[str, int]:
    """Trials lost, rerun and duplicated across the kill, from Tune's records, MLflow's runs and the trials' timelines.

    * lost: trials a category should have (``trials_per_category``) that Tune did not end, plus trials
      whose MLflow run is missing, still RUNNING, or lacks a step Tune recorded;
    * rerun: trials that trained again from step 0 after a checkpoint of theirs had been stored (its
      ``tune.report`` had returned; a report cut by the kill stored nothing), or trained again after
      they had ended (a replay from a pruned checkpoint does not train);
    * duplicated: trials Tune holds beyond ``trials_per_category`` plus MLflow runs beyond one per trial.
    """
    check = tracking_check(tune, mlflow)
    ended = sum(1 for t in tune if t.status in ("TERMINATED", "ERROR"))
    per_category: dict[str, int] = {}
    for t in tune:
        per_category[t.category] = per_category.get(t.category, 0) + 1
    expected = trials_per_category * categories
    lost = max(0, expected - ended) + check["mlflow_missing_runs"] + check["mlflow_unfinished_runs"] \
        + check["mlflow_trials_missing_points"]
    rerun = steps_redone = resumed = 0
    for runs in invocations.values():
        worked = [r for r in runs if not r.replay]
        again = False
        for i, r in enumerate(worked[1:], start=1):
            before = worked[:i]
            reported = max(b.persisted_step for b in before)
            if (r.start_step == 0 and reported > 0) or any(b.ended for b in before):
                again = True
            steps_redone += max(0, reported - r.start_step)
            resumed += r.start >= killed_at
        rerun += again
    extra = sum(max(0, n - trials_per_category) for n in per_category.values())
    return {
        "trials_lost": lost, "trials_rerun": rerun, "trials_duplicated": extra + check["mlflow_duplicated_runs"],
        "trials_resumed_after_kill": resumed, "steps_redone": steps_redone,
        "mlflow_repeated_points": check["mlflow_repeated_points"],
    }


# --- the baseline: one bare Tuner ------------------------------------------------------------------------


def run_baseline(ctx: SizeContext, log: Log) -> dict[str, object]:
    """One run of bare Tune at this size; its figures."""
    folder = ctx.root / "baseline"
    events = folder / "events"
    events.mkdir(parents=True)
    cfg = ctx.spec.base_config()
    settings = BaselineSettings(
        sim=SimulatedTrial.from_config(cfg, step_seconds=ctx.settings.step_seconds, events_dir=str(events)),
        categories=list(ctx.spec.categories), trials=ctx.size.trials,
        max_concurrent=min(ctx.size.slots, ctx.size.categories * ctx.settings.max_concurrent),
        grace_period=min(cfg.train.steps, ctx.spec.scheduler.grace_period_evals * cfg.train.eval_interval),
        reduction_factor=ctx.spec.scheduler.reduction_factor, storage=str(folder / "storage"),
        reuse_actors=ctx.spec.cluster.reuse_actors,
    )
    (folder / "settings.json").write_text(settings.to_json())
    log(f"{ctx.size.label} baseline: bare Tune")
    args = ["--settings", str(folder / "settings.json"), "--out", str(folder / "result.json")]
    run = run_driver(BASELINE_MODULE, args, env=ctx.cluster.env, log_path=folder / "driver.log")
    if run.returncode != 0:
        raise RuntimeError(f"{ctx.size.label} baseline: the driver failed ({run.returncode}); see {folder}/driver.log")
    out: dict[str, object] = dict(json.loads((folder / "result.json").read_text())["counts"])
    figures = timeline_figures(read_invocations(events), run.started, ctx.size.slots, ctx.size.total_trials,
                               ctx.full_trial_s)
    out.update(figures)
    out.update(driver_figures(run, figures.get("last_trial_end", run.ended), ctx.size.total_trials,
                              figures.get("first_trial_start")))
    out["storage_bytes_per_trial"] = tree_bytes(folder / "storage") / ctx.size.total_trials
    out["logs"] = [str(folder / "driver.log")]
    return out


# --- the whole bench -------------------------------------------------------------------------------------

RATIO_KEYS = ("slot_utilisation", "window_utilisation", "wall_s", "sweep_window_s", "time_to_first_trial_s",
              "idle_tail_s", "driver_cpu_s", "driver_cpu_s_window", "driver_peak_rss_mb", "storage_bytes_per_trial")


def ratios(ours: Mapping[str, object], base: Mapping[str, object]) -> dict[str, float]:
    """Ours over bare Tune for the figures where the comparison means something."""
    out = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), base.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and b:
            out[key] = a / b
    return out


def _num(figures: Mapping[str, object], key: str) -> float:
    value = figures.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def projection(ours: Mapping[str, object], base: Mapping[str, object] | None, step_s: float) -> dict[str, object]:
    """The paper sweep (15 x 32 trials, 2700 steps) on 16 and 32 GPUs, from one size's measured figures.

    Per trial: busy = ASHA's measured share of the full step budget x 2700 x ``step_s``; plus the measured
    idle slot-seconds per trial (scheduling, actor start-up, the driver's start, tails), as measured on
    this machine. Wall = trials x (busy + idle) / GPUs; GPU-hours = GPUs x wall.
    """
    trials = PAPER_CATEGORIES * PAPER_TRIALS

    def one(figures: Mapping[str, object]) -> dict[str, float]:
        busy = _num(figures, "step_budget_share") * PAPER_STEPS * step_s
        idle = _num(figures, "idle_slot_s_per_trial")
        out = {"busy_s_per_trial": busy, "idle_slot_s_per_trial": idle}
        for gpus in (16, 32):
            wall = trials * (busy + idle) / gpus
            out[f"wall_h_{gpus}_gpus"] = wall / 3600
            out[f"gpu_hours_{gpus}_gpus"] = gpus * wall / 3600
            out[f"ideal_wall_h_{gpus}_gpus"] = trials * busy / gpus / 3600
        return out

    result: dict[str, object] = {"trials": trials, "steps": PAPER_STEPS, "step_s": step_s, "ours": one(ours)}
    if base is not None:
        result["baseline"] = one(base)
    return result


@contextmanager
def _cluster(slots: int, log: Log) -> Iterator[LocalRayCluster]:
    cluster = start_sim_cluster(slots, log)
    try:
        yield cluster
    finally:
        cluster.stop()


def prepare_data(spec: SweepSpec) -> None:
    """Generate and check the data before any driver runs, so no driver's figures include it."""
    g = spec.data.generate
    if g is None:
        raise ConfigError("data.generate: the sweep-scale spec must generate its data")
    root = Path(spec.data.root)
    ensure_dataset(root, spec.categories, size=g.size, n_train=g.n_train, n_test_good=g.n_test_good,
                   n_test_defect=g.n_test_defect, seed=g.seed)
    preflight_dataset(root, spec.categories)


@dataclass
class SizeResult:
    """The runs of one size: ours, bare Tune, ours killed and resumed; ours over bare Tune."""

    size: ScaleSize
    ours: dict[str, object]
    baseline: dict[str, object] | None = None
    crash: dict[str, object] | None = None

    def runs(self) -> list[tuple[str, dict[str, object]]]:
        out = [("ours", self.ours)]
        if self.baseline is not None:
            out.append(("baseline", self.baseline))
        if self.crash is not None:
            out.append(("crash", self.crash))
        return out

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"label": self.size.label, "size": asdict(self.size), **dict(self.runs())}
        if self.baseline is not None:
            out["ours_over_baseline"] = ratios(self.ours, self.baseline)
        return out


def run_size(size: ScaleSize, settings: ScaleSettings, root: Path, log: Log) -> SizeResult:
    """Bare Tune, ours, and ours killed at half-time and resumed, at one size, on one simulated cluster."""
    root.mkdir(parents=True, exist_ok=True)
    spec = scale_spec(size, settings, root.parent).with_changes({"storage.path": str(root / "storage")})
    prepare_data(spec)
    spec_path = _write_spec(spec, root / "spec.yaml")
    with _cluster(size.slots, log) as cluster:
        ctx = SizeContext(size, settings, root, cluster, spec_path, spec)
        base = run_baseline(ctx, log) if settings.baseline else None
        ctx.server = start_mlflow_server(root / "mlflow")
        ctx.proxy = TimingProxy(ctx.server.uri)
        try:
            result = SizeResult(size, run_ours(ctx, "ours", log), base)
            if settings.crash:
                half = _num(result.ours, "wall_s") / 2
                result.crash = run_ours(ctx, "crash", log, kill_after_s=half if half == half else 30.0)
        finally:
            ctx.proxy.stop()
            ctx.server.stop()
    return result


@dataclass
class ScaleReport:
    """What ``memseg bench sweep-scale`` found."""

    settings: ScaleSettings
    sizes: list[SizeResult]
    bench_wall_s: float
    machine: dict[str, object]

    def projection(self) -> dict[str, object]:
        last = self.sizes[-1]
        return {**projection(last.ours, last.baseline, self.settings.project_step_s), "from_size": last.size.label}

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": 1, "section": "sweep_scale", "machine": self.machine,
            "settings": {**asdict(self.settings), "sizes": [s.label for s in self.settings.sizes]},
            "sizes": [s.to_dict() for s in self.sizes], "projection": self.projection(),
            "bench_wall_s": self.bench_wall_s,
        }


def run_sweep_scale(settings: ScaleSettings, log: Log) -> ScaleReport:
    """Every size in turn, each on a fresh simulated cluster."""
    started = time.monotonic()
    sizes = []
    with tempfile.TemporaryDirectory(prefix="memseg-scale-") as tmp:
        workdir = Path(settings.workdir or tmp).resolve()
        for size in settings.sizes:
            sizes.append(run_size(size, settings, workdir / size.label, log))
    return ScaleReport(settings, sizes, time.monotonic() - started, machine_info("cpu"))


MUST_BE_ZERO = ("mlflow_missing_runs", "mlflow_unfinished_runs", "mlflow_trials_missing_points",
                "mlflow_duplicated_runs", "trials_lost", "trials_rerun", "trials_duplicated")


def problems(report: ScaleReport) -> list[str]:
    """Every run that lost, reran or duplicated a trial, or whose MLflow record is incomplete (one line each)."""
    out = []
    for size in report.sizes:
        for kind, figures in size.runs():
            if kind == "baseline":
                continue
            if figures.get("ok") is not True or figures.get("untracked"):
                out.append(f"{size.size.label} {kind}: the sweep did not end ok ({figures.get('untracked')})")
            out += [f"{size.size.label} {kind}: {key} = {figures[key]}" for key in MUST_BE_ZERO
                    if figures.get(key) not in (None, 0)]
    return out


def format_report(report: ScaleReport) -> str:
    """The figures as a text table, one column per run, and the projection."""
    cols = [(f"{size.size.label} {kind}", figures) for size in report.sizes for kind, figures in size.runs()]
    keys = ["wall_s", "ideal_s", "slot_utilisation", "sweep_window_s", "window_utilisation",
            "time_to_first_trial_s", "idle_tail_s", "driver_cpu_s_per_100_trials",
            "driver_cpu_s_window_per_100_trials", "driver_peak_rss_mb", "mlflow_requests_per_trial", "mlflow_p50_ms",
            "mlflow_p95_ms", "storage_bytes_per_trial", "trials_finished", "trials_pruned", "trials_failed",
            "trials_lost", "trials_rerun", "trials_duplicated"]
    rows: list[tuple[str, ...]] = [("figure", *(c[0] for c in cols))]
    rows += [(key, *(_fmt(c[1].get(key)) for c in cols)) for key in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    proj = report.projection()
    for kind in ("ours", "baseline"):
        p = proj.get(kind)
        if isinstance(p, Mapping):
            lines.append(f"paper sweep projected from {proj['from_size']} ({kind}, {proj['step_s']} s/step): "
                         f"16 GPUs {p['wall_h_16_gpus']:.2f} h ({p['gpu_hours_16_gpus']:.1f} GPU-h), "
                         f"32 GPUs {p['wall_h_32_gpus']:.2f} h ({p['gpu_hours_32_gpus']:.1f} GPU-h)")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.bench_sweep_scale drive ...``: our driver process (the bare-Tune one is
    :mod:`sweeps.bench_scale_baseline`)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench_sweep_scale")
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("drive", help="our driver: the production sweep stage with simulated trials")
    d.add_argument("--spec", required=True)
    d.add_argument("--tracking-uri", required=True)
    d.add_argument("--sweep-id", required=True)
    d.add_argument("--events", required=True)
    d.add_argument("--step-seconds", type=float, required=True)
    d.add_argument("--resume", action="store_true")
    d.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return drive(args.spec, tracking_uri=args.tracking_uri, sweep_id=args.sweep_id, events=args.events,
                 step_seconds=args.step_seconds, resume=args.resume, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
