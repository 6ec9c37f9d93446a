"""``mlflow models serve`` of a registered model, as a context manager for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 300


@contextmanager
def scoring_server(model_uri: str, port: int, log: Path, env: Mapping[str, str]) -> Iterator[str]:
    """Serve ``model_uri`` (``models:/<name>@<alias>``) on ``port``, one worker, the current environment.

    Yields the base URL once ``/ping`` answers 200; the server's output goes to ``log``. The server's
    process group is terminated on exit, killed if it does not stop within 20 s.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
             "--env-manager", "local", "-h", HOST, "-p", str(port), "-w", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True,
            env={**os.environ, **env},
        )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "scoring server not up:\n" + log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
