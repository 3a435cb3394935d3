"""Node faults on a real multi-node Ray cluster (tests.ray_cluster): a head with no resources and worker nodes
with one CPU and one logical GPU each, drivers joining with `doodl-ray run --address` and token auth.

Each test runs two jobs at once on the same nodes, one per output format: `files` on local disk, whose actors
take a node's GPU, and `webdataset` on S3 (moto's server), whose actors take most of a node's CPU; so every
worker node holds one actor of each job, and one lost node costs each job one of its two actors. Items are
the fault processor's stamps: each image names its item and the attempt that made it, which its row records,
so "every image on storage is the one its ledger row describes" is checked image by image."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from doodl_ray.benchmarks.local_cluster import LocalCluster
from doodl_ray.jobs.ledger import Ledger
from doodl_ray.jobs.storage import Storage
from tests.faulty_processor import stamp_matches
from tests.ray_cluster import ROOT, local_cluster, ray_cluster  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401

# Several `ray start` nodes and timed recoveries: these run after the parallel tests, with the machine to themselves.
pytestmark = pytest.mark.alone

FORMATS = {"files": {"gpus_per_actor": 1, "cpus_per_actor": 0.05},
           "webdataset": {"gpus_per_actor": 0, "cpus_per_actor": 0.9}}
"""Resources per format: on a node of 1 CPU and 1 GPU, one actor of each job fits, and no two of one job."""


@dataclass
class Job:
    """One `doodl-ray run` of a stamp job in a process of its own."""

    fmt: str
    ids: list[str]
    ledger: Ledger
    trace: Path  # the processor's record of every finished item: <id>.<nonce>, holding the time
    log: Path
    process: subprocess.Popen

    def traced(self, since: float = 0.0) -> list[str]:
        """The items finished (by any actor, kept or not) after `since`, as <id>.<nonce>."""
        return [p.name for p in self.trace.iterdir() if float(p.read_text() or 0) > since]

    def wait(self, timeout_s: float = 240) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"{self.fmt} driver still running after {timeout_s} s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text()


def start_jobs(cluster: LocalCluster, where: Path, s3, count: int, seconds: float, actors: int, progress: int,
               **spec: dict) -> dict[str, Job]:
    """A files job and a webdataset job of `count` stamped items each, `seconds` per item; both start
    computing once every actor of both is ready (their drivers start actors at different speeds), and are
    returned once each has stamped `progress` items."""
    ids = [f"i{k:03d}" for k in range(count)]
    hold = where / "hold"
    hold.touch()
    jobs = {}
    for fmt, resources in FORMATS.items():
        folder = where / fmt
        (folder / "trace").mkdir(parents=True)
        pq.write_table(pa.table({"id": ids}), folder / "in.parquet")
        if fmt == "files":
            uri, storage = str(folder / "out"), {}
        else:
            uri, storage = f"s3://{s3.bucket()}/out", {"endpoint_url": s3.url}
        data = {"run_id": f"faults-{fmt}", "model": "unused",
                "input": {"uri": str(folder / "in.parquet"), "columns": {"id": "id"}},
                "output": {"uri": uri, "shard_size": 10, "format": fmt}, "storage": storage,
                "processor": {"name": "tests.faulty_processor:FaultyProcessor",
                              "options": {"seconds": seconds, "trace": str(folder / "trace"),
                                          "hold": str(hold)}},
                "resources": {"actors": actors, "batch_size": 1, **resources},
                "retries": {"base_delay": 0.5, "max_delay": 2.0}, **spec}
        (folder / "job.yaml").write_text(yaml.safe_dump(data))
        jobs[fmt] = Job(fmt, ids, Ledger(Storage(uri, storage)), folder / "trace", folder / "driver.log",
                        run_driver(cluster, folder))
    wait_for("ready actors", lambda: all(f"actors={actors}/{actors}" in job.output() for job in jobs.values()))
    hold.unlink()
    wait_for("progress", lambda: all(len(j.traced()) >= progress for j in jobs.values()))
    return jobs


def run_driver(cluster: LocalCluster, folder: Path) -> subprocess.Popen:
    with open(folder / "driver.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "doodl_ray.cli", "run", str(folder / "job.yaml"),
                                 "--address", cluster.address], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=cluster.env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", DOODL_RAY_PROGRESS_SECONDS="1"))


def wait_for(what: str, condition, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.2)


def check_run(job: Job) -> list[dict]:
    """A finished run: one ok row per id, each image the one its row describes, nothing left in parts or
    staging; returns the rows."""
    rows = job.ledger.finished_rows()
    assert sorted(r["id"] for r in rows) == job.ids and {r["status"] for r in rows} == {"ok"}, job.fmt
    images = job.ledger.images(rows)
    assert all(stamp_matches(images[r["key"]]["image"], r) for r in rows), job.fmt
    storage = job.ledger.storage
    assert storage.list("results/parts") == [] and storage.list("staging") == [], job.fmt
    counts = job.ledger.counts()
    assert (counts["state"], counts["strays"]) == ("finished", 0)
    return rows


def capacity(job: Job) -> list[str]:
    """The `actors=R/W` of every progress line the driver printed, in order."""
    return re.findall(r"actors=(\d+/\d+)", job.output())


def generation(row: dict) -> int:
    """Which incarnation of its actor slot computed a row (the actor's name ends .w<slot>.<generation>)."""
    return int(row["worker"].rsplit(".", 1)[1])


def test_node_killed_then_replaced(ray_cluster, s3_endpoint, tmp_path: Path):
    """(a) A worker node SIGKILLed mid-run, a replacement joining later: each job goes on with one actor,
    restores the other on the new node, and ends with one row per id, every image its item's own. (The items
    are held while the replacement starts, however long that takes here, so it always gets work.)"""
    jobs = start_jobs(ray_cluster, tmp_path, s3_endpoint, count=60, seconds=0.25, actors=2, progress=6)
    ray_cluster.workers[0].kill()
    replacement = ray_cluster.add_worker(wait=False)
    done = {fmt: len(job.traced()) for fmt, job in jobs.items()}
    wait_for("progress on one actor", lambda: all(capacity(j)[-1] == "1/2" and len(j.traced()) >= done[f] + 4
                                                  for f, j in jobs.items()))
    (tmp_path / "hold").touch()
    wait_for("the replacement's actors", lambda: all(capacity(j)[-1] == "2/2" for j in jobs.values()), 240)
    (tmp_path / "hold").unlink()
    for job in jobs.values():
        assert job.wait() == 0, job.output()[-3000:]
        rows = check_run(job)
        assert any(generation(r) >= 2 for r in rows), f"{job.fmt}: the restored actor ran nothing"
    ray_cluster.wait_up(replacement)


def test_node_lost_without_replacement(ray_cluster, s3_endpoint, tmp_path: Path):
    """(c) A worker node lost and none coming back: each job finishes on its remaining actor, reporting the
    reduced capacity, while the lost one waits for room to start again."""
    jobs = start_jobs(ray_cluster, tmp_path, s3_endpoint, count=40, seconds=0.2, actors=2, progress=6)
    victim = next(w for w in ray_cluster.workers if w.alive)
    victim.kill()
    for job in jobs.values():
        assert job.wait() == 0, job.output()[-3000:]
        check_run(job)
        assert capacity(job)[-1] == "1/2", job.fmt
    ray_cluster.add_worker(wait=False)  # for the next test, started while this one checks


def test_node_frozen_then_resumed(ray_cluster, s3_endpoint, tmp_path: Path):
    """(b) A worker node frozen (SIGSTOP) until Ray marks it dead and each driver gives its actor up, then
    resumed after both runs finished: the abandoned actors finish the items they held and try to write them
    (their traces say so), but no results part or image of theirs lands in a finished shard, and nothing
    stray is left."""
    ray_cluster.wait_workers_up()
    jobs = start_jobs(ray_cluster, tmp_path, s3_endpoint, count=60, seconds=0.3, actors=2, progress=8)
    victim = next(w for w in ray_cluster.workers if w.alive)
    victim.freeze()
    for job in jobs.values():
        assert job.wait() == 0, job.output()[-3000:]
    finished = time.time()
    before = {fmt: check_run(job) for fmt, job in jobs.items()}
    victim.thaw()
    wait_for("late writes", lambda: any(j.traced(since=finished) for j in jobs.values()), timeout_s=30)
    time.sleep(3)  # the abandoned actors' writes, and their own clean-up, before their node's Ray ends them
    for fmt, job in jobs.items():
        assert check_run(job) == before[fmt]  # the same rows, each image still the one its row describes
        late = dict(name.split(".") for name in job.traced(since=finished))
        assert not [r for r in before[fmt] if late.get(r["id"]) == str(int(r["final_loss"]))]
    victim.kill()


def test_head_killed_then_rerun(ray_cluster, s3_endpoint, tmp_path: Path):
    """(d) The head SIGKILLed mid-run: each driver ends with one line of ours and exit status 75, its
    manifest says head_lost; a rerun on a fresh cluster finishes with one row per id."""
    ray_cluster.wait_workers_up()
    jobs = start_jobs(ray_cluster, tmp_path, s3_endpoint, count=60, seconds=0.3, actors=1, progress=8,
                      timeouts={"head_seconds": 3.0})
    ray_cluster.head.kill()
    lost = time.monotonic()
    line = re.compile(r"^doodl-ray run: error: lost the Ray cluster's head at 127\.0\.0\.\d+:\d+ \(no answer for "
                      r"\d+ s\); rerun resumes from the ledger, (\d+) of 60 items done$")
    for job in jobs.values():
        assert job.wait(timeout_s=60) == 75, job.output()[-3000:]
        last = job.output().strip().splitlines()[-1]
        assert line.match(last), last
        assert job.ledger.manifest()["state"] == "head_lost"
        assert 8 <= int(line.match(last).group(1)) < 60
    assert time.monotonic() - lost < 30

    fresh = local_cluster(tmp_path / "fresh")
    try:
        fresh.start(workers=1)
        for job in jobs.values():
            job.process = run_driver(fresh, job.log.parent)
        for job in jobs.values():
            assert job.wait() == 0, job.output()[-3000:]
            check_run(job)
    finally:
        fresh.close()
