"""A real multi-node Ray cluster on this machine for integration tests: a head plus worker nodes.

Each node is its own ``ray start --block`` process (own session, free ports, a unique temp dir), so
trials really run on another node than the driver's, as on a cluster. Token authentication is on,
with a token made for this cluster only (Ray 2.59+ enables it by default for local clusters; the
test process and every subprocess get it through ``cluster.env``).

Teardown never runs ``ray stop``: that kills *every* Ray process of the user on the machine,
including other people's test clusters. Instead each ``ray start --block`` process gets SIGTERM
(it then stops its own raylet/GCS/workers), and whatever is left of its process group is killed.

Usage (tests/conftest.py registers this module as a plugin, so a test asks by argument)::

    def test_x(ray_cluster):
        subprocess.run([...], env={**os.environ, **ray_cluster.env})
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRayCluster:
    """Handle of a running cluster."""

    address: str
    temp_dir: Path
    env: dict[str, str]
    node_cpus: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.node_cpus)

    def stop(self) -> None:
        """Stop the nodes this object started (workers first), then remove the temp dir."""
        for proc in reversed(self.procs):
            _stop_process_group(proc)
        self.procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def alive_nodes(self) -> int:
        code = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot query the cluster at {self.address}:\n{out.stderr[-3000:]}")
        return int(out.stdout.strip().splitlines()[-1])


def _stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # The node's own children (raylet, GCS, workers) share its process group (start_new_session).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not open port {port} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def start_cluster(node_cpus: Sequence[int] = (1, 1), object_store_mb: int = 256) -> LocalRayCluster:
    """Start a head with ``node_cpus[0]`` CPUs and one worker node per further entry.

    Raises:
        RuntimeError: a node did not come up (with the tail of its log).
    """
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    # Short path: Ray's unix sockets live under it and sockets are limited to ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port = free_port()
    address = f"{HOST}:{port}"
    env = {
        "RAY_ADDRESS": address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cluster = LocalRayCluster(address=address, temp_dir=temp_dir, env=env, node_cpus=list(node_cpus))
    common = [
        "--block", "--node-ip-address", HOST, f"--object-store-memory={object_store_mb * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    proc_env = {**os.environ, **env}
    proc_env.pop("RAY_ADDRESS")  # `ray start --head` must not try to join an existing cluster
    try:
        for i, cpus in enumerate(node_cpus):
            log = temp_dir / f"node{i}.log"
            if i == 0:
                args = [
                    ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
                    "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                ]
            else:
                args = [ray_bin, "start", f"--address={address}"]
            args += [f"--num-cpus={cpus}", f"--dashboard-agent-listen-port={free_port()}", *common]
            with log.open("w") as out:
                proc = subprocess.Popen(
                    args, stdout=out, stderr=subprocess.STDOUT, env=proc_env, start_new_session=True
                )
            cluster.procs.append(proc)
            if i == 0:
                _wait_port(port, proc, log)
        deadline = time.monotonic() + 180
        while (alive := cluster.alive_nodes()) < len(node_cpus):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {alive} of {len(node_cpus)} Ray nodes came up")
            time.sleep(2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head (1 CPU) plus one worker node (1 CPU), for the whole test session."""
    cluster = start_cluster((1, 1))
    try:
        yield cluster
    finally:
        cluster.stop()
