"""Faults on real Ray actors and a real S3 endpoint: a killed actor, a SIGKILLed driver, items that
always fail or hang, and throttled storage, in every output format. Each run must end with exactly one
row per input row in the ledger, and each ok row exactly once in the format's containers."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from doodl_ray.jobs import run_job
from doodl_ray.jobs.ledger import Ledger
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.jobs.storage import Storage
from tests.job_helpers import job, put_table, read_results
from tests.ray_session import ROOT, ray_session  # noqa: F401
from tests.s3_server import FaultProxy, s3_endpoint  # noqa: F401

FORMATS = pytest.mark.parametrize("fmt", ["files", "webdataset", "parquet"])


def ids(n: int) -> list[str]:
    return [f"i{k:03d}" for k in range(n)]


def packed_ids(fs, prefix: str, fmt: str) -> list[str]:
    """The ids in a packed output's containers, read with tarfile / pyarrow (each one whole, or this fails)."""
    fs.invalidate_cache()
    found = []
    for path in sorted(fs.glob(f"{prefix}/data/*")):
        data = io.BytesIO(fs.cat_file(path))
        if fmt == "webdataset":
            with tarfile.open(fileobj=data) as tar:
                found += [json.load(tar.extractfile(m))["id"] for m in tar if m.name.endswith(".json")]
        else:
            found += pq.read_table(data, columns=["id"])["id"].to_pylist()
    return found


def check_output(fs, prefix: str, fmt: str, ok_ids: list[str]) -> list[dict]:
    """Exactly one ledger row per input row (returned) and, in a packed format, each ok id once in the
    containers, with the staging gone; in the files format, one image per ok id."""
    rows = read_results(fs, prefix)
    assert len({r["id"] for r in rows}) == len(rows)
    if fmt == "files":
        assert len(fs.glob(f"{prefix}/images/*.png")) == len(ok_ids)
    else:
        assert sorted(packed_ids(fs, prefix, fmt)) == sorted(ok_ids)
        assert not fs.glob(f"{prefix}/staging/**") and not fs.glob(f"{prefix}/images/**")
    return rows


@FORMATS
def test_actor_killed_mid_run(ray_session, s3_endpoint, fmt):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    put_table(fs, f"{bucket}/in/a.parquet", id=ids(40))
    spec = parse_spec(job(bucket, s3_endpoint.url, processor={"name": "noop", "options": {"seconds": 0.05}},
                          resources={"batch_size": 1}, output={"format": fmt}))
    started = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=run_job(
        spec, progress=False, on_progress=lambda c: c["computed"] >= 6 and started.set())))
    worker.start()
    assert started.wait(60)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(".w0.1"))
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]))
    worker.join(120)
    summary = result["summary"]
    assert (summary.ok, summary.failed, summary.computed) == (40, 0, 40)
    rows = check_output(fs, f"{bucket}/out", fmt, ids(40))
    assert sorted(r["id"] for r in rows) == ids(40) and all(r["status"] == "ok" for r in rows)
    assert any(r["attempts"] == 2 for r in rows)  # the killed actor's running item was redone elsewhere


@FORMATS
def test_failing_hanging_and_permanent_items(ray_session, s3_endpoint, tmp_path: Path, fmt):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    put_table(fs, f"{bucket}/in/a.parquet", id=ids(10) + ["bad", "nan", "hang"])
    options = {"fail": ["bad"], "nan": ["nan"], "hang": ["hang"]}
    spec = parse_spec(job(bucket, s3_endpoint.url, processor={"name": "tests.faulty_processor:FaultyProcessor",
                                                              "options": options},
                          retries={"attempts": 2}, timeouts={"item_seconds": 4.0}, output={"format": fmt}))
    summary = run_job(spec, progress=False)
    assert (summary.ok, summary.failed) == (10, 3)
    rows = {r["id"]: r for r in check_output(fs, f"{bucket}/out", fmt, ids(10))}
    assert len(rows) == 13
    assert rows["bad"]["status"] == "failed" and rows["bad"]["attempts"] == 2
    assert rows["bad"]["error_type"] == "RuntimeError" and rows["bad"]["error"] == "cannot render bad"
    assert (rows["nan"]["status"], rows["nan"]["attempts"], rows["nan"]["error_type"]) == ("failed", 1, "NonFiniteLoss")
    assert rows["hang"]["error_type"] == "TimeoutError" and rows["hang"]["attempts"] == 2
    assert all(rows[i]["status"] == "ok" for i in ids(10))


def test_retry_failed_repacks_a_finished_shard(ray_session, tmp_path: Path):
    """A shard packed with a failed row is reopened by --retry-failed: its ok rows keep the images of the
    container already there, the retried row brings its own, and each id is in the new container once."""
    put = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ids(6)}), put)
    outage = tmp_path / "outage"
    outage.touch()
    options = {"fail": ["i002"], "outage": str(outage)}
    spec = parse_spec(job("unused", "unused", input={"uri": str(put)}, output={"uri": str(tmp_path / "out"),
                          "format": "webdataset"}, retries={"attempts": 1},
                          processor={"name": "tests.faulty_processor:FaultyProcessor", "options": options}))
    first = run_job(spec, progress=False)
    assert (first.ok, first.failed) == (5, 1)
    outage.unlink()
    again = run_job(spec, retry_failed=True, progress=False)
    assert (again.ok, again.failed, again.computed) == (6, 0, 1)
    fs = fsspec.filesystem("file")
    rows = check_output(fs, str(tmp_path / "out"), "webdataset", ids(6))
    assert {r["id"]: r["session"] for r in rows}["i002"] == again.session
    assert sorted(r["id"] for r in rows if r["session"] == first.session) == [i for i in ids(6) if i != "i002"]


@pytest.mark.parametrize("fmt, match, failures", [
    ("files", "/out/images/", 12),  # image PUTs (packed formats stage theirs the same way): storage + item retries
    ("parquet", "/out/data/", 2),  # the driver's container upload: storage retries
])
def test_transient_storage_errors_are_retried(ray_session, s3_endpoint, fmt, match, failures):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    put_table(fs, f"{bucket}/in/a.parquet", id=ids(20))
    proxy = FaultProxy(s3_endpoint.url, failures=failures, match=match)
    try:
        no_retries = {"options": {"config_kwargs": {"retries": {"max_attempts": 1}}}}
        spec = parse_spec(job(bucket, proxy.url, storage=no_retries, output={"format": fmt}))
        summary = run_job(spec, progress=False)
    finally:
        proxy.close()
    assert proxy.injected == failures  # more than s3fs retries on its own: our storage and item retries took the rest
    assert (summary.ok, summary.failed) == (20, 0)
    rows = check_output(fs, f"{bucket}/out", fmt, ids(20))
    assert sorted(r["id"] for r in rows) == ids(20)


@FORMATS
def test_driver_sigkill_then_resume(ray_session, s3_endpoint, tmp_path: Path, fmt):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    put_table(fs, f"{bucket}/in/a.parquet", id=ids(30))
    data = job(bucket, s3_endpoint.url, processor={"name": "noop", "options": {"seconds": 0.1}},
               resources={"batch_size": 1}, output={"format": fmt})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    driver = subprocess.Popen([sys.executable, "-m", "doodl_ray.cli", "run", str(tmp_path / "job.yaml"),
                               "--address", ray_session, "--no-progress"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = Storage(f"s3://{bucket}/out", {"endpoint_url": s3_endpoint.url})
    deadline = time.monotonic() + 90
    while len(storage.list("results/parts", ".parquet")) < 6 and time.monotonic() < deadline:
        assert driver.poll() is None, "driver exited early"
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    killed = Ledger(storage).counts()
    assert killed["state"] == "running" and 6 <= killed["ok"] < 30
    if fmt != "files":
        assert len(set(packed_ids(fs, f"{bucket}/out", fmt))) <= killed["ok"]  # whatever is there is whole

    summary = run_job(parse_spec(data), progress=False)
    assert summary.resumed >= killed["ok"] and summary.computed == 30 - summary.resumed and summary.ok == 30
    rows = check_output(fs, f"{bucket}/out", fmt, ids(30))
    assert sorted(r["id"] for r in rows) == ids(30)
    sessions = Counter(r["session"] for r in rows)
    assert sessions[summary.session] == summary.computed  # only the missing items were computed again
    assert Ledger(storage).counts()["state"] == "finished"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_container_killed_mid_write_never_appears(s3_endpoint, tmp_path: Path, where):
    """SIGKILL while a container streams into Storage.open_atomic: nothing under the final name, ever."""
    uri, options = str(tmp_path / "out"), {}
    if where == "s3":
        uri, options = f"s3://{s3_endpoint.bucket()}/out", {"endpoint_url": s3_endpoint.url}
    code = (f"import time; from doodl_ray.jobs.storage import Storage\n"
            f"with Storage({uri!r}, {options!r}).open_atomic('data/00000.tar') as f:\n"
            f"    f.write(b'x' * 1_000_000); f.flush(); print('writing', flush=True); time.sleep(120)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    storage = Storage(uri, options)
    assert not storage.exists("data/00000.tar") and storage.list("data") == []
