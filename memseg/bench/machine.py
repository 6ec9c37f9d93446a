"""What a figure depends on besides the code (CPU, cores, versions, device, commit, load), and the
thread settings the bench runs under."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

# Thread settings change the figures a lot on a shared machine (docs/performance.md), so they are
# recorded with the machine.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "MEMSEG_NUM_THREADS",
              "OPENCV_FOR_THREADS_NUM", "CUDA_VISIBLE_DEVICES")


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, i.e. a container's or a Ray trial's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo, else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout holding this package (``+dirty`` when it has local changes), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: str = "cpu") -> dict[str, object]:
    """CPU, cores, library versions, device, commit, load average and thread environment variables."""
    info: dict[str, object] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "git_commit": git_commit(),
        "device": device,
        "device_name": cpu_model(),
        "load_average": load_average(),
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["gpu_memory_mib"] = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**20
    return info


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: leave as is), restoring the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def worker_threads() -> Iterator[None]:
    """One torch and one OpenCV thread, as a DataLoader worker runs (``memseg.data.datasets.worker_init_fn``).

    "Per process" synthesis figures are what one worker delivers; intra-op threads would also make
    them collapse on a loaded machine (every parallel region waits for a descheduled thread).
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with torch_threads(1):
            yield
    finally:
        cv2.setNumThreads(before)
