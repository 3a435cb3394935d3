"""The multi-node Ray cluster of the node-fault tests (doodl_ray.benchmarks.local_cluster), one per test module:
the suite's token (this process's Ray clients send it, tests.ray_head), and this checkout on the nodes'
PYTHONPATH, so actors import the tests' processors by name."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from doodl_ray.benchmarks.local_cluster import LocalCluster
from tests.ray_head import TOKEN

ROOT = Path(__file__).resolve().parents[1]


def local_cluster(root: Path) -> LocalCluster:
    """A cluster (nothing started yet) whose nodes and drivers send the suite's token and import this checkout."""
    return LocalCluster(root, TOKEN, [str(ROOT)])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A head and two worker nodes for one test module; tests may kill, freeze and add workers."""
    cluster = local_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start(workers=2)
        yield cluster
    finally:
        cluster.close()
