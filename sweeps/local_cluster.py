"""A multi-node Ray cluster on one machine: a head plus worker nodes, each its own ``ray start --block``.

Used where a real cluster must be stood up and taken down again by the same program: the
integration tests (trials really run on another node than the driver's) and the sweep-at-scale
benchmark (nodes that declare GPUs the machine does not have). Each node gets its own session,
free ports and a short temp dir; token authentication is on with a token made for this cluster
only, handed to the driver and every subprocess through :attr:`LocalRayCluster.env`.

Teardown never runs ``ray stop``: that kills *every* Ray process of the user on the machine,
including other clusters. Each ``ray start --block`` process gets SIGTERM (it then stops its own
raylet, GCS and workers), and whatever is left of its process group is killed.

Nodes start one at a time and a worker that exits while registering is started again: Ray gives a
starting node 30 s (hard-coded) to register, and on a loaded 2-core machine several raylets
registering at once miss it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
NODE_START_TRIES = 3
LOG_TAIL = 3000


def free_port() -> int:
    """A TCP port on :data:`HOST` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ray_executable() -> str:
    """The ``ray`` command of this interpreter's environment."""
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class NodeSpec:
    """What one node declares; ``gpus`` need not exist (Ray schedules by the declared count)."""

    cpus: int
    gpus: int = 0


@dataclass
class LocalRayCluster:
    """Handle of a running cluster; :meth:`stop` ends only the nodes this handle started."""

    address: str
    temp_dir: Path
    env: dict[str, str]
    nodes: list[NodeSpec]
    dashboard_url: str | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def node_cpus(self) -> list[int]:
        return [node.cpus for node in self.nodes]

    @property
    def gpus(self) -> int:
        return sum(node.gpus for node in self.nodes)

    def stop(self) -> None:
        """Stop the nodes (workers first), then remove the temp dir."""
        for proc in reversed(self.procs):
            stop_process_group(proc)
        self.procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def alive_nodes(self) -> int:
        """Nodes the cluster's GCS reports alive, asked from a fresh driver process.

        Raises:
            RuntimeError: the cluster cannot be queried (with the tail of the error).
        """
        code = "import ray; ray.init(log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **self.env}, capture_output=True, text=True,
            timeout=180, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot query the cluster at {self.address}:\n{out.stderr[-LOG_TAIL:]}")
        return int(out.stdout.strip().splitlines()[-1])


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM a ``ray start --block`` process, then kill what is left of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the node's raylet, GCS and workers share its process group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    """Return once ``port`` accepts connections.

    Raises:
        RuntimeError: ``proc`` exited first, or the port stayed closed (with the tail of ``log``).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-LOG_TAIL:]}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.5)
    msg = f"the Ray head did not open port {port} within {timeout_s:.0f} s:\n{log.read_text()[-LOG_TAIL:]}"
    raise RuntimeError(msg)


def _wait_alive(cluster: LocalRayCluster, expected: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once ``expected`` nodes are alive; False if ``proc`` (the node starting) exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if cluster.alive_nodes() >= expected:
            return True
        time.sleep(2)
    return False


def start_local_cluster(
    nodes: Sequence[NodeSpec],
    *,
    object_store_mb: int = 256,
    dashboard: bool = False,
    node_env: Mapping[str, str] | None = None,
    temp_prefix: str = "rt",
    node_timeout_s: float = 300.0,
) -> LocalRayCluster:
    """Start ``nodes[0]`` as the head and one worker node per further entry, one at a time.

    Args:
        nodes: what each node declares.
        object_store_mb: each node's object store.
        dashboard: start the head's dashboard (the Jobs API); its URL is ``dashboard_url``.
        node_env: the nodes' environment (default: this process's), without ``RAY_ADDRESS``.
        temp_prefix: prefix of the temp dir under /tmp (kept short: Ray's socket paths are limited).
        node_timeout_s: how long one worker may take to register.

    Raises:
        ValueError: no node given.
        RuntimeError: a node did not come up (with the tail of its log).
    """
    if not nodes:
        raise ValueError("a cluster needs at least a head node")
    temp_dir = Path(tempfile.mkdtemp(prefix=temp_prefix, dir="/tmp"))
    port = free_port()
    dash_port = free_port() if dashboard else None
    address = f"{HOST}:{port}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = LocalRayCluster(
        address=address, temp_dir=temp_dir, env={**auth, "RAY_ADDRESS": address}, nodes=list(nodes),
        dashboard_url=f"http://{HOST}:{dash_port}" if dash_port else None,
    )
    proc_env = {k: v for k, v in (os.environ if node_env is None else node_env).items() if k != "RAY_ADDRESS"}
    proc_env.update(auth)  # without RAY_ADDRESS: `ray start --head` must not join another cluster
    common = ["--block", "--node-ip-address", HOST, f"--object-store-memory={object_store_mb * 2**20}",
              "--disable-usage-stats"]
    head = [ray_executable(), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}"]
    head += (["--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={dash_port}"]
             if dash_port else ["--include-dashboard=false"])
    try:
        for i, node in enumerate(nodes):
            args = head if i == 0 else [ray_executable(), "start", f"--address={address}"]
            for attempt in range(1 if i == 0 else NODE_START_TRIES):
                log = temp_dir / f"node{i}-{attempt}.log"
                node_args = [*args, f"--num-cpus={node.cpus}", f"--num-gpus={node.gpus}",
                             f"--dashboard-agent-listen-port={free_port()}", *common]
                with log.open("w") as out:
                    proc = subprocess.Popen(node_args, stdout=out, stderr=subprocess.STDOUT, env=proc_env,
                                            start_new_session=True)
                if i == 0:
                    cluster.procs.append(proc)
                    wait_port(port, proc, log)
                    if dash_port:
                        wait_port(dash_port, proc, log, timeout_s=180)
                    break
                if _wait_alive(cluster, i + 1, proc, node_timeout_s):
                    cluster.procs.append(proc)
                    break
                stop_process_group(proc, grace_s=5)
            else:
                logs = sorted(temp_dir.glob(f"node{i}-*.log"))
                tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs)
                raise RuntimeError(f"Ray worker node {i} did not come up in {NODE_START_TRIES} tries\n{tails}")
    except BaseException:
        cluster.stop()
        raise
    return cluster
