"""A real multi-node Ray cluster on this machine for integration tests: a head plus worker nodes.

The cluster is :mod:`sweeps.local_cluster`'s (each node its own ``ray start --block`` process
group, token authentication with a token made for this cluster only, teardown without ``ray
stop``), so trials really run on another node than the driver's, as on a cluster.

Usage (tests/conftest.py registers this module as a plugin, so a test asks by argument)::

    def test_x(ray_cluster):
        subprocess.run([...], env={**os.environ, **ray_cluster.env})
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from sweeps.local_cluster import HOST, LocalRayCluster, NodeSpec, free_port, start_local_cluster

__all__ = ["HOST", "LocalRayCluster", "free_port", "ray_cluster", "start_cluster"]


def start_cluster(node_cpus: Sequence[int] = (1, 1), object_store_mb: int = 256) -> LocalRayCluster:
    """Start a head with ``node_cpus[0]`` CPUs and one worker node per further entry (no GPUs).

    Raises:
        RuntimeError: a node did not come up (with the tail of its log).
    """
    return start_local_cluster([NodeSpec(cpus) for cpus in node_cpus], object_store_mb=object_store_mb)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head (1 CPU) plus one worker node (1 CPU), for the whole test session."""
    cluster = start_cluster((1, 1))
    try:
        yield cluster
    finally:
        cluster.stop()
