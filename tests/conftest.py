"""Shared fixtures. Helpers live in ``tests/helpers/``; keep this file small."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated MVTec-layout dataset (carpet + bottle, 64 px), written once per session."""
    from memseg.data.synthetic_mvtec import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp("synthetic_mvtec"), size=64, categories=("carpet", "bottle"),
        n_train=24, n_test_good=6, n_test_defect=8, seed=0,
    )


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """Run the test with one torch thread (the CPU is shared with other test processes), then restore."""
    from memseg.bench import torch_threads as one_thread

    with one_thread(1):
        yield
