"""Seeds and random-number-generator state for reproducible, resumable training.

The synthesis draws from explicit ``numpy.random.Generator`` objects (``memseg.synthesis.worker_rng``),
so the global generators here only matter for model initialisation and anything torch draws itself.
Their state is saved in ``train_state.pt`` as tensors so that it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from typing import Any, cast

import numpy as np
import torch

from memseg.errors import ConfigError

NUM_THREADS_ENV = "MEMSEG_NUM_THREADS"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_num_threads(num_threads: int | None = None) -> int | None:
    """Set torch's intra-op threads from the argument, else from ``$MEMSEG_NUM_THREADS``; return it."""
    if num_threads is None:
        raw = os.environ.get(NUM_THREADS_ENV, "").strip()
        if not raw:
            return None
        try:
            num_threads = int(raw)
        except ValueError:
            msg = f"${NUM_THREADS_ENV}: must be a positive integer, got {raw!r}"
            raise ConfigError(msg) from None
    if num_threads < 1:
        msg = f"num_threads: must be >= 1, got {num_threads}"
        raise ConfigError(msg)
    torch.set_num_threads(num_threads)
    return num_threads


def rng_state() -> dict[str, Any]:
    """The global generators' state, as tensors and plain types only (``weights_only`` safe)."""
    py_state = random.getstate()
    # legacy=True returns the MT19937 tuple (the dict form is for legacy=False).
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
