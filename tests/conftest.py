"""Shared fixtures. Helpers live in ``tests/helpers/``; keep this file small."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Service fixtures (real Ray clusters, mlflow servers, PostgreSQL) are shared with every test module
# through pytest's plugin mechanism, so modules ask for them by argument instead of importing them.
pytest_plugins = [
    "tests.helpers.ray_cluster",
    "tests.helpers.mlflow_server",
    "tests.helpers.postgres",
    "tests.helpers.mlflow_auth_server",
]


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
    from memseg.bench.machine import torch_threads as one_thread

    with one_thread(1):
        yield
