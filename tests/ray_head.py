"""A real Ray head for the cluster tests, started as `ray start --head --block` in its own temp dir with
its own free ports on 127.0.0.1, so it neither finds nor is found by the tests' `ray.init()` sessions
(those look for /tmp/ray/ray_current_cluster, and this head writes its address under its temp dir).

It is stopped by SIGTERM to the `ray start` process this fixture started, which then stops every process
of its own session; never `ray stop`, which would kill every Ray process on the machine. The head runs
with the test's Python first on PATH (jobs run `python -m doodl_ray.cli` with the checkout's code) and
metrics reported every second instead of every ten.

Token authentication is on, as Ray 2.60 turns it on for a user: `ray start --head` finds a token in
~/.ray/auth_token (the head gets a HOME of its own holding TOKEN) and protects the dashboard, the Jobs API
and GCS with it. This test process sends the token the way a user's shell must (RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN), set when this module is imported, before any Ray session starts here, so the local
`ray.init()` sessions of the other tests use the same token instead of writing one under the real HOME."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from tests.s3_server import free_port

TOKEN = secrets.token_hex(32)
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _send_token() -> None:
    from ray._private.authentication_test_utils import reset_auth_token_state

    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    reset_auth_token_state()  # Ray caches the mode and the token per process


_send_token()

_PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
               "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
               "object-manager-port")


@dataclass(frozen=True)
class RayHead:
    dashboard_url: str  # the Jobs API: what `doodl-ray submit --address` takes
    metrics_url: str  # this node's Prometheus endpoint
    temp_dir: Path
    home: Path  # the head's HOME: .ray/auth_token holds TOKEN, as on a machine that ran `ray start --head`


_HEADS: list[RayHead] = []


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """One head for the whole session (starting one takes seconds): the fixture is imported by several test
    modules, each of which gets its own instance of it; the first starts the head, the others reuse it."""
    if _HEADS:
        yield _HEADS[0]
        return
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    temp_dir = Path(tempfile.mkdtemp(prefix="dr-head-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    home = temp_dir / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(TOKEN)
    (home / ".ray" / "auth_token").chmod(0o600)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HOME": str(home),
           "RAY_metrics_report_interval_ms": "1000", "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for name in ("RAY_ADDRESS", *AUTH_VARIABLES):  # the head finds its token by itself, as `ray start` does
        env.pop(name, None)
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "2", "--include-dashboard", "true",
               "--disable-usage-stats", "--temp-dir", str(temp_dir), *(f"--{k}={v}" for k, v in ports.items())]
    log = open(temp_dir / "ray-start.log", "wb")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        _wait_for(f"{url}/api/jobs/", head, temp_dir, timeout_s=180)
        _HEADS.append(RayHead(url, f"http://127.0.0.1:{ports['metrics-export-port']}/metrics", temp_dir, home))
        yield _HEADS[0]
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for(url: str, head: subprocess.Popen, temp_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if head.poll() is not None:
            log = (temp_dir / "ray-start.log").read_text()[-2000:]
            raise RuntimeError(f"ray start exited {head.returncode}: {log}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=auth_header()), timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Jobs API at {url} after {timeout_s} s") from None
            time.sleep(0.5)


def auth_header(token: str = TOKEN) -> dict[str, str]:
    """What Ray's clients send to a token-protected dashboard."""
    return {"Authorization": f"Bearer {token}"}


class FakeJobsClient:
    """The JobSubmissionClient calls doodl_ray.cluster.submission makes, in memory, for tests of the
    submission logic that need no head. Refuses a duplicate id the way Ray's Jobs API does."""

    def __init__(self) -> None:
        self.jobs: dict[str, SimpleNamespace] = {}
        self.stale_list = False  # list_jobs answers as if nothing were submitted yet (a racing submitter)

    def list_jobs(self) -> list[SimpleNamespace]:
        return [] if self.stale_list else list(self.jobs.values())

    def submit_job(self, *, submission_id: str, entrypoint: str, runtime_env: dict, metadata: dict) -> str:
        from ray.job_submission import JobStatus

        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 400: Job {submission_id} already exists.")
        self.jobs[submission_id] = SimpleNamespace(submission_id=submission_id, status=JobStatus.PENDING,
                                                   entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
        return submission_id

    def get_job_status(self, job_id: str) -> str:
        return self.jobs[job_id].status

    def set_status(self, job_id: str, status: str) -> None:
        from ray.job_submission import JobStatus

        self.jobs[job_id].status = JobStatus(status)
