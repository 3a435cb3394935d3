"""One local Ray session for the job tests: 2 CPUs, 2 logical GPUs, loopback only, no dashboard.
Workers get the repository on PYTHONPATH (so a test-defined processor can be imported by name) and
one torch thread each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session(s3_endpoint) -> Iterator[str]:
    """Starts after the S3 fixture so workers inherit its credentials; yields the cluster address."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import ray

    if ray.is_initialized():  # the fixture is imported by several test modules: one session for all
        yield ray.get_runtime_context().gcs_address
        return
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
