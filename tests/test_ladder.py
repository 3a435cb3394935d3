"""Escalation ladders and dataset budgets on real local Ray actors and real Parquet ledgers: a budget that runs
out mid-ladder ends the job cleanly (scripted acceptance, no model), and a small real ladder on the shipped
digits models survives SIGKILLs of its driver between rungs and mid-rung without repeating a finished rung."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from doodl_ray.cli import main
from doodl_ray.jobs import run_job
from doodl_ray.jobs.ledger import Ledger
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.jobs.storage import Storage
from doodl_ray.review.gallery import GalleryQuery, gallery_page
from doodl_ray.review.results import RunResults
from tests.ray_session import ROOT, ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401


def results(uri: str) -> dict[str, dict]:
    rows = Ledger(Storage(uri)).finished_rows()
    assert len(rows) == len({r["id"] for r in rows})  # exactly one final row per id
    return {r["id"]: r for r in rows}


def test_budget_runs_out_mid_ladder(ray_session, tmp_path: Path):  # noqa: F811
    """10 items, three rungs costing 10 / 100 / 1000: the budget pays every first rung and four second ones, so of
    the six items rung 1 rejects, the first four (input order) climb and the last two end unaccepted at once; no
    third rung is affordable. Nothing fails, and the spend never passes the budget."""
    ids = [f"i{n}" for n in range(10)]
    pq.write_table(pa.table({"id": ids}), tmp_path / "in.parquet")
    accept = {"i0": 1, "i1": 1, "i2": 1, "i3": 1, "i4": 2, "i6": 2, "i7": 3}
    rung = {"name": "none", "sampler": {"steps": 1}}
    spec = parse_spec({
        "run_id": "ladder-budget", "model": "unused",
        "input": {"uri": str(tmp_path / "in.parquet"), "columns": {"id": "id"}},
        "output": {"uri": str(tmp_path / "out"), "shard_size": 4},
        "method": {"ladder": [{**rung, "budget": 10}, {**rung, "budget": 100}, {**rung, "budget": 1000}],
                   "acceptance": {"guide_loss": 0.0}},
        "budget": {"total_unet_evals": 10 * 10 + 4 * 100},
        "processor": {"name": "tests.ladder_processor:ScriptedLadder",
                      "options": {"accept": accept, "cost": [10, 100, 1000]}},
        "resources": {"actors": 2, "gpus_per_actor": 1, "batch_size": 2},
    })
    summary = run_job(spec, progress=False)
    assert (summary.ok, summary.unaccepted, summary.failed) == (6, 4, 0)
    rows = results(str(tmp_path / "out"))
    assert {i: (r["status"], r["rung"], r["rung_evals"]) for i, r in rows.items()} == {
        "i0": ("ok", 1, [10]), "i1": ("ok", 1, [10]), "i2": ("ok", 1, [10]), "i3": ("ok", 1, [10]),
        "i4": ("ok", 2, [10, 100]), "i6": ("ok", 2, [10, 100]),
        "i5": ("unaccepted", 2, [10, 100]), "i7": ("unaccepted", 2, [10, 100]),  # rung 3 was not affordable
        "i8": ("unaccepted", 1, [10]), "i9": ("unaccepted", 1, [10]),  # no budget left for their rung 2
    }
    assert all(r["image_uri"] and Path(r["image_uri"]).exists() for r in rows.values())
    report = json.loads((tmp_path / "out" / "manifest.json").read_text())["ladder"]
    assert report["unet_evals"] == 500 <= spec.budget.total_unet_evals
    assert report["unet_evals_per_accepted"] == round(500 / 6, 2)
    assert [(r["items"], r["accepted"], r["unet_evals"]) for r in report["rungs"]] == [(10, 4, 100), (4, 2, 400),
                                                                                        (0, 0, 0)]
    assert not (tmp_path / "out" / "rungs").exists()  # kept rung results go with their shards

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", str(tmp_path / "out")]) == 0
    assert "ok 6, unaccepted 4, failed 0" in out.getvalue() and "83 per accepted image" in out.getvalue()
    assert "rung 2 none (budget 100): 4 items, 2 accepted (0.50), 400 UNet evaluations" in out.getvalue()

    run = RunResults(str(tmp_path / "out"))  # review filters by rung (and by the new status)
    page = gallery_page(run, GalleryQuery.parse({"rung": "2", "status": "ok"}, run))
    assert sorted(r["id"] for r in page.rows) == ["i4", "i6"]
    assert run.image("i8") is not None  # an unaccepted item keeps its best image


def _persisted(ledger: Ledger, spec_hash: str) -> set[tuple[str, int]]:
    """(id, rung) of every rung result the ledger holds: accepted ones as final rows, the others kept."""
    rows = []
    for key in ledger.storage.list("results", ".parquet"):
        try:
            rows += ledger.read_rows(key)
        except FileNotFoundError:  # a part its shard's finalization removed since the listing: the next poll sees it
            pass
    rows += ledger.rungs(range(2), spec_hash)
    return {(r["id"], r["rung"]) for r in rows if r.get("rung")}


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _kill_when(driver: subprocess.Popen, ready, log: Path) -> None:
    """SIGKILL the driver once `ready()` holds, then wait for its actors (their pids are in the log) to be gone,
    so nothing of the killed session writes after the next one has read the ledger."""
    deadline = time.monotonic() + 240
    while not ready():
        assert driver.poll() is None, "driver exited early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    for pid in {line["pid"] for line in _log(log)}:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def test_ladder_survives_driver_kills(ray_session, tmp_path: Path):  # noqa: F811
    """A two-rung ladder on the shipped digits model (one guided sample, then particle steering), accepted by the
    guide's target probability, the diffusion prior and a second classifier; the driver is SIGKILLed between the
    rungs and again in the middle of rung 2, then rerun. Exactly one final row per id, each accepted image is the
    one its accepting rung made (and each unaccepted one its best rung's), and no finished rung ran again."""
    from doodl_ray.digits import ASSETS_DIR
    from tests.tiny_models import save_tiny_classifier

    n = 8
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(n)], "target": list(range(n)),
                             "seed": [1000 + i for i in range(n)]}), tmp_path / "in.parquet")
    save_tiny_classifier(tmp_path / "accept.pt", channels=1, classes=10, size=16)
    log = tmp_path / "made.jsonl"
    sampler = {"steps": 10}
    data = {
        "run_id": "ladder-kill", "model": str(ASSETS_DIR / "balanced"),
        "input": {"uri": str(tmp_path / "in.parquet"), "columns": {"id": "id", "target": "target", "seed": "seed"}},
        "guidance": {"type": "classifier", "model": str(ASSETS_DIR / "guide.pt"), "crops": {"count": 1}},
        "method": {"ladder": [{"name": "one-step", "budget": 20, "guidance_scale": 0.3, "sampler": sampler},
                              {"name": "particles", "budget": 40, "sampler": sampler}],
                   "acceptance": {"target_probability": 0.5, "prior": 0.1,
                                  "model": {"type": "classifier", "model": str(tmp_path / "accept.pt")},
                                  "model_loss": 100.0}},
        "budget": {"total_unet_evals": 1000},
        "output": {"uri": str(tmp_path / "out"), "shard_size": 4},
        "processor": {"name": "tests.ladder_processor:LoggedLadder",
                      "options": {"log": str(log), "slow": 2, "pause": 2.0}},
        "resources": {"actors": 1, "gpus_per_actor": 1, "batch_size": 2, "micro_batch": 3},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    ledger = Ledger(Storage(str(tmp_path / "out")))

    def driver() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "doodl_ray.cli", "run", str(tmp_path / "job.yaml"),
                                 "--address", ray_session, "--no-progress"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def done() -> set[tuple[str, int]]:
        return _persisted(ledger, spec.result_hash())

    kills = []  # (what was persisted at the kill, how many log lines there were)
    _kill_when(driver(), lambda: sum(r == 1 for _, r in done()) == n, log)  # every rung 1 is done: between rungs
    kills.append((done(), len(_log(log))))
    assert all(r == 1 for _, r in kills[0][0])
    climbing = n - sum(r["status"] == "ok" for r in ledger.table(["id", "status"]).to_pylist())
    assert climbing >= 3  # batches of 2: a kill after the first leaves rung 2 unfinished
    _kill_when(driver(), lambda: 1 <= sum(r == 2 for _, r in done()) < climbing, log)  # mid-rung 2
    kills.append((done(), len(_log(log))))

    summary = run_job(spec, progress=False)
    rows = results(str(tmp_path / "out"))
    assert sorted(rows) == [f"d{i}" for i in range(n)] and summary.failed == 0
    made: dict[tuple[str, int], set[str]] = {}
    for line in _log(log):
        if "id" in line:
            made.setdefault((line["id"], line["rung"]), set()).add(line["sha256"])
    assert all(len(shas) == 1 for shas in made.values())  # a rung rerun after a kill made the same image
    assert all(line["micro_batch"] == [3, 3] for line in _log(log) if "micro_batch" in line)  # every rung's engine
    for persisted, seen in kills:  # no rung finished before a kill ran again after it
        again = {(line["id"], line["rung"]) for line in _log(log)[seen:] if "id" in line}
        assert not persisted & again
    for item_id, row in rows.items():
        image = hashlib.sha256(Path(row["image_uri"]).read_bytes()).hexdigest()
        assert made[(item_id, row["rung"])] == {image}  # the image the rung made that the row names
        if row["status"] == "ok":
            assert len(row["rung_evals"]) == row["rung"] and row["scores"]["accept/passed"] == 3
        else:
            assert row["status"] == "unaccepted" and len(row["rung_evals"]) == 2
        assert row["rung_evals"][0] == 23 and row["compute"]["unet_evals"] == sum(row["rung_evals"])  # + the prior
    statuses = [(r["status"], r["rung"]) for r in rows.values()]
    assert ("ok", 1) in statuses and any(rung == 2 for _, rung in statuses)
    report = json.loads((tmp_path / "out" / "manifest.json").read_text())["ladder"]
    assert report["rungs"][0]["items"] == n and report["rungs"][1]["items"] == climbing
