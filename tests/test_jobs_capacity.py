"""Lost capacity on the local Ray session (2 logical GPUs): an actor slot that can never start does not stop a
run the other actors can finish; a run no actor can serve stops after timeouts.no_capacity_seconds with one
line saying a rerun resumes, exit status 75, and a manifest that says so."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from doodl_ray.cli import main
from doodl_ray.jobs import run_job
from doodl_ray.jobs.metrics import RunTally
from doodl_ray.jobs.spec import parse_spec
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401


def spec_data(tmp_path: Path, items: int, **resources) -> dict:
    pq.write_table(pa.table({"id": [f"i{k:02d}" for k in range(items)]}), tmp_path / "in.parquet")
    return {"run_id": "capacity", "model": "unused",
            "input": {"uri": str(tmp_path / "in.parquet"), "columns": {"id": "id"}},
            "output": {"uri": str(tmp_path / "out"), "shard_size": 10},
            "processor": {"name": "noop", "options": {"seconds": 0.05}},
            "resources": {"batch_size": 1, **resources}, "retries": {"base_delay": 0.2, "max_delay": 0.5}}


def test_a_slot_that_cannot_start_does_not_stop_the_run(ray_session, tmp_path: Path, caplog):
    """Three actors of which only two can load: the third's starts fail again and again (retried with backoff;
    the items wait until it has failed three times, after which a run used to stop), the run finishes on two,
    and its capacity reads 2 of 3."""
    (tmp_path / "loads").mkdir()
    (tmp_path / "hold").touch()
    data = spec_data(tmp_path, 20, actors=3, gpus_per_actor=0.5, cpus_per_actor=0.5)
    data["processor"] = {"name": "tests.faulty_processor:FaultyProcessor",
                         "options": {"loads": str(tmp_path / "loads"), "loadable": 2, "hold": str(tmp_path / "hold")}}
    tally, result = RunTally(), {}
    run = threading.Thread(target=lambda: result.update(summary=run_job(parse_spec(data), progress=False,
                                                                        metrics=tally)))
    with caplog.at_level(logging.WARNING, logger="doodl_ray.jobs.driver"):
        run.start()
        deadline = time.monotonic() + 180
        while len(start_failures(caplog)) < 3:
            assert run.is_alive() and time.monotonic() < deadline, start_failures(caplog)
            time.sleep(0.2)
        (tmp_path / "hold").unlink()
        run.join(120)
    assert (result["summary"].ok, result["summary"].failed) == (20, 0)
    assert tally.capacity == (2, 3)
    tries = start_failures(caplog)
    assert all("cannot load the model" in t for t in tries) and "2 of 3 actors running" in tries[-1], tries


def start_failures(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]


def test_no_actor_able_to_run_stops_with_a_resumable_status(ray_session, tmp_path: Path, capsys):
    data = spec_data(tmp_path, 5, actors=2, gpus_per_actor=3)  # more GPUs than any node has
    data["timeouts"] = {"startup_seconds": 1.0, "no_capacity_seconds": 3.0}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "job.yaml"), "--address", ray_session, "--no-progress"]) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("doodl-ray run: error: no actor could run for 3 s (worker 1: not ready after 1 s (are the "
                       "requested GPUs/CPUs available?)); rerun resumes from the ledger, 0 of 5 items done"), err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["state"] == "no_capacity" and manifest["interruption"] in err[-1]
