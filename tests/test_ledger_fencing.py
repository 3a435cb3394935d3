"""Fencing, worker by worker: two attempts at the same items (a frozen actor the driver gave up on, and its
replacement), run as real JobWorkers in this process against a real output folder. Each stages under its
own lease, so the shard keeps the images its rows describe, whichever attempt wrote last; once the shard is
finished the old attempt writes nothing, a part that lands after the marker removes itself with its images,
and what a writer that died in between leaves is a stray that `status` reports and the next run removes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from doodl_ray.cli import main
from doodl_ray.jobs.ledger import Ledger, ShardFinished, ids_hash
from doodl_ray.jobs.reader import read_input
from doodl_ray.jobs.rows import RowContext
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.jobs.storage import Storage
from doodl_ray.jobs.worker import JobWorker
from tests.faulty_processor import stamp_matches

IDS = ["a", "b", "c"]


@pytest.fixture(params=["files", "webdataset"])
def run(request, tmp_path: Path):
    """A one-shard stamp job, its plan and a ledger of its output."""
    pq.write_table(pa.table({"id": IDS}), tmp_path / "in.parquet")
    spec = parse_spec({"run_id": "fence", "model": "unused",
                       "input": {"uri": str(tmp_path / "in.parquet"), "columns": {"id": "id"}},
                       "output": {"uri": str(tmp_path / "out"), "format": request.param},
                       "processor": {"name": "tests.faulty_processor:FaultyProcessor"},
                       "resources": {"gpus_per_actor": 0}})
    plan = read_input(spec, {})
    context = RowContext("s", spec.result_hash(), spec.method.name, spec.model, "test")
    return spec, plan, context, Ledger(Storage(spec.output.uri), request.param)


def attempt(spec, plan, context, lease: str) -> dict[str, dict]:
    """Every item run once by a worker of its own under `lease`: its rows by id (or its errors)."""
    worker = JobWorker(spec, context, lease)
    return {o.id: o.row or o.error for o in worker.process([(item, 1) for item in plan.items], lease)}


def test_the_shard_keeps_the_images_its_rows_describe(run):
    spec, plan, context, ledger = run
    kept = attempt(spec, plan, context, "new")
    attempt(spec, plan, context, "old")  # the abandoned attempt stages the same items after the kept one
    ledger.finalize_shard(0, [kept[i] for i in IDS], ids_hash(IDS), spec.result_hash())
    rows = ledger.finished_rows()
    images = ledger.images(rows)
    assert all(stamp_matches(images[r["key"]]["image"], r) for r in rows)
    assert [int(r["final_loss"]) for r in rows] == [int(kept[i]["final_loss"]) for i in IDS]
    assert ledger.storage.list("staging") == [] and ledger.storage.list("results/parts") == []

    late = attempt(spec, plan, context, "old")  # wakes up after the shard was finished: writes nothing
    assert all("shard 0" in str(error) for error in late.values()), late
    assert ledger.storage.list("staging") == [] and ledger.storage.list("results/parts") == []
    assert ledger.finished_rows() == rows and ledger.images(rows) == images


def test_a_part_landing_after_the_marker_removes_itself(run):
    spec, plan, context, ledger = run
    rows = attempt(spec, plan, context, "new")
    ledger.finalize_shard(0, [rows[i] for i in IDS], ids_hash(IDS), spec.result_hash())
    # an old attempt that checked the marker before it was written, then wrote slowly
    late = {**rows["a"], "image_uri": ledger.write_image(0, "old", "a", "image", b"late")}
    with pytest.raises(ShardFinished):
        ledger.write_part(0, "old-t", [late])
    assert ledger.storage.list("staging") == [] and ledger.storage.list("results/parts") == []


def test_strays_are_reported_and_removed_by_the_next_run(run, capsys):
    spec, plan, context, ledger = run
    rows = attempt(spec, plan, context, "new")
    ledger.finalize_shard(0, [rows[i] for i in IDS], ids_hash(IDS), spec.result_hash())
    ledger.write_manifest({"run_id": "fence", "state": "finished", "totals": {"rows": 3, "shards": 1}})
    ledger.write_image(0, "old", "a", "image", b"late")  # a writer that died before its own check
    ledger.storage.write_bytes("results/parts/shard-00000/old-t.parquet", b"late")
    assert ledger.counts()["strays"] == 2
    assert main(["status", spec.output.uri]) == 0
    out = capsys.readouterr().out
    assert "strays 2: parts or staged images written for finished shards by abandoned attempts" in out
    ledger.tidy()
    assert ledger.counts()["strays"] == 0
