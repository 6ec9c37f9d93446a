"""Peak resident memory of this process over a block of code."""

from __future__ import annotations

import gc
import resource
import sys
import threading
from pathlib import Path

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _rss_bytes() -> int | None:
    """Current RSS: psutil where installed (any OS), else Linux's /proc; None where neither exists."""
    try:
        import psutil  # noqa: PLC0415 - optional, not a dependency of memseg
    except ImportError:
        return _proc_status_bytes("VmRSS")
    return int(psutil.Process().memory_info().rss)


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where Linux does not allow it."""
    if _proc_status_bytes("VmHWM") is None:
        return False
    try:
        _PROC_CLEAR_REFS.write_text("5")  # "5": reset the peak RSS only (Linux >= 4.0)
    except OSError:
        return False
    return True


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs.

    On Linux the kernel's own high-water mark is reset on entry and read on exit (``method`` =
    ``vmhwm``): exact, whatever the scheduler does. Elsewhere, with psutil (where installed), a
    background thread samples the RSS every ``interval`` seconds, which can miss a short spike while
    the machine is loaded or C code holds the GIL; without psutil, the process's ``ru_maxrss`` at the
    end is used, the peak since the process started and therefore an upper bound. (tracemalloc does
    not see torch's allocations.)
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self.start = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes() or 0
            self.peak = max(self.peak, rss)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if _reset_high_water_mark():
            self.method = "vmhwm"
            self.start = _proc_status_bytes("VmRSS") or 0
            self.peak = self.start
        elif _rss_bytes() is not None:
            self.method = "sampled"
            self.start = _rss_bytes() or 0
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        else:
            self.method = "ru_maxrss"
            self.start = _maxrss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "vmhwm":
            self.peak = max(self.peak, _proc_status_bytes("VmHWM") or 0)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() or 0)
        else:
            self.peak = _maxrss_bytes()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mib(self) -> float:
        return max(0, self.peak - self.start) / 2**20
