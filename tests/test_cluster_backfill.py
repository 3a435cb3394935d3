"""`doodl-ray backfill` over three date partitions on a real S3 endpoint (moto's server): the day that
already holds a finished run is skipped, the other two run, each under its own date= output folder;
then `--submit` over a range one day longer submits only the new day. Plus the partition rules."""

from __future__ import annotations

import datetime as dt
import io
import json
import shlex
from contextlib import redirect_stderr
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from doodl_ray.cli import main
from doodl_ray.cluster import submission
from doodl_ray.cluster.partitions import days, is_complete, partition, render
from doodl_ray.errors import InvalidInput
from doodl_ray.jobs import run_job
from tests.ray_head import FakeJobsClient
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401

DAYS = [dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)]


def write_spec(tmp_path: Path, input_uri: str, output_uri: str, **changes) -> Path:
    spec = {"run_id": "nightly", "model": "unused", "processor": {"name": "noop"},
            "input": {"uri": input_uri, "columns": {"id": "id"}}, "output": {"uri": output_uri, "shard_size": 2},
            "resources": {"actors": 1, "gpus_per_actor": 1, "batch_size": 2},
            "retries": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1}, **changes}
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_partition_renders_input_output_and_run_id(tmp_path: Path):
    path = write_spec(tmp_path, "s3://b/prompts/date={date}/", "s3://b/out")
    part = partition(path, ["seed=3"], DAYS[0])
    assert part.spec.input.uri == "s3://b/prompts/date=2026-11-01/"
    assert part.spec.output.uri == "s3://b/out/date=2026-11-01"
    assert (part.spec.run_id, part.spec.seed) == ("nightly-2026-11-01", 3)
    templated = write_spec(tmp_path, "s3://b/in/{date:%Y/%m/%d}/", "s3://b/out/{date:%Y%m%d}/")
    assert partition(templated, [], DAYS[1]).spec.output.uri == "s3://b/out/20261102/"
    assert partition(templated, [], DAYS[1]).spec.input.uri == "s3://b/in/2026/11/02/"
    assert days(DAYS[0], DAYS[2]) == DAYS


@pytest.mark.parametrize("input_uri,message", [("s3://b/prompts/", "no {date} template"),
                                               ("s3://b/{date}/{region}/", "bad template")])
def test_partition_rejects_inputs_without_a_usable_template(tmp_path: Path, input_uri: str, message: str):
    with pytest.raises(InvalidInput, match=message):
        partition(write_spec(tmp_path, input_uri, "s3://b/out"), [], DAYS[0])
    with pytest.raises(InvalidInput, match="before"):
        days(DAYS[1], DAYS[0])
    with pytest.raises(InvalidInput, match="bad template"):
        render("x/{}", DAYS[0])


def test_backfill_skips_the_complete_day_and_runs_the_others(ray_session, s3_endpoint, tmp_path: Path, monkeypatch):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    for day in DAYS:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": [f"{day}-{i}" for i in range(3)]}), buffer)
        fs.pipe_file(f"{bucket}/prompts/date={day}/part-0.parquet", buffer.getvalue())
    path = write_spec(tmp_path, f"s3://{bucket}/prompts/date={{date}}/", f"s3://{bucket}/out",
                      storage={"endpoint_url": s3_endpoint.url})
    done_before = partition(path, [], DAYS[1])
    run_job(done_before.spec, progress=False)  # the middle day was run earlier
    assert is_complete(done_before.spec) and not is_complete(partition(path, [], DAYS[0]).spec)
    manifest_key = f"{bucket}/out/date={DAYS[1]}/manifest.json"
    session = json.loads(fs.cat_file(manifest_key))["session"]

    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["backfill", str(path), "--from", str(DAYS[0]), "--to", str(DAYS[2]), "--no-progress"])
    assert rc == 0, err.getvalue()
    assert f"{DAYS[1]}: complete, skipped" in err.getvalue()
    assert err.getvalue().count("3 rows -> 3 ok") == 2  # two days ran
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(manifest_key))["session"] == session  # the complete day was not touched
    for day in DAYS:
        out = f"{bucket}/out/date={day}"
        ids = [r["id"] for f in fs.glob(f"{out}/results/shard-*.parquet")
               for r in pq.read_table(io.BytesIO(fs.cat_file(f))).to_pylist()]
        assert sorted(ids) == [f"{day}-{i}" for i in range(3)]
        assert json.loads(fs.cat_file(f"{out}/manifest.json"))["run_id"] == f"nightly-{day}"

    # --submit skips the same complete days and submits only the new one, with its partition overrides.
    client, new_day = FakeJobsClient(), DAYS[2] + dt.timedelta(days=1)
    monkeypatch.setattr(submission, "connect", lambda address: client)
    with redirect_stderr(io.StringIO()):
        rc = main(["backfill", str(path), "--from", str(DAYS[0]), "--to", str(new_day), "--submit"])
    assert rc == 0
    (job,) = client.jobs.values()
    assert job.submission_id == submission.submission_id(partition(path, [], new_day).spec)
    assert f'output.uri="s3://{bucket}/out/date={new_day}"' in shlex.split(job.entrypoint)
