"""Typed result columns, and ledgers of the release before them. `tests/data/ledger-v0` is a digits run
(3 ok rows, 1 rejected; guide and judge scores) written by the release that kept scores, terms, compute and
provenance as JSON text; `status`, `review`, `sheet` and `export` read it as they read a run of today, and
its export is a ledger of today, which DuckDB queries without parsing any JSON."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from doodl_ray.cli import main
from doodl_ray.review.results import RunResults

OLD = Path(__file__).parent / "data" / "ledger-v0"
RECORDED = "/tmp/doodl-ledger-v0"  # where the old release wrote it: its rows' image URIs start there


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    shutil.copytree(OLD, tmp_path / "old")
    assert pq.read_schema(tmp_path / "old" / "results" / "shard-00000.parquet").field("scores").type == "string"
    return tmp_path / "old"


def test_status_and_review_read_an_old_ledger(old_run: Path):
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", str(old_run), "--json"]) == 0
    counts = json.loads(out.getvalue())
    assert (counts["ok"], counts["rejected"], counts["pending"], counts["state"]) == (3, 1, 0, "finished")
    run = RunResults(str(old_run))
    scores = {"score:guide/classifier", "score:eval/classifier", "score:eval_initial/classifier"}
    assert scores <= set(run.numeric_columns)
    row = run.row("cat/3")
    assert row["scores"]["eval/classifier"] == row["score:eval/classifier"] > 0.001  # parsed once, typed
    assert row["image_uri"].startswith(f"{RECORDED}/images/")  # recorded where it was written; read where it is
    assert run.image("cat/3").data == (old_run / "images" / "cat_3~39477a4e0309d246c0b1.png").read_bytes()
    assert run.has_image("one", "initial_image") and run.image("bad") is None


def test_sheet_and_export_of_an_old_ledger(old_run: Path, tmp_path: Path):
    assert main(["sheet", str(old_run), "--out", str(tmp_path / "sheet.png")]) == 0
    assert Image.open(tmp_path / "sheet.png").size[0] > 3 * 16
    for fmt in ("parquet", "files"):
        assert main(["export", str(old_run), "--format", fmt, "--to", str(tmp_path / fmt)]) == 0
    new = pq.read_table(tmp_path / "files" / "results" / "shard-00000.parquet")
    assert new.schema.field("scores").type.equals(pa.map_(pa.string(), pa.float64()))
    assert new.schema.field("compute").type.equals(pa.map_(pa.string(), pa.int64()))
    assert new.schema.field("provenance").type.get_field_index("runtime") >= 0
    old_rows = {r["id"]: r for r in pq.read_table(old_run / "results" / "shard-00000.parquet").to_pylist()}
    for row in new.to_pylist(maps_as_pydicts="strict"):
        if row["status"] == "ok":
            assert row["scores"] == json.loads(old_rows[row["id"]]["scores"])
            assert row["compute"] == json.loads(old_rows[row["id"]]["compute"])
            assert (tmp_path / "files" / "images" / f"{row['key']}.png").read_bytes() == \
                (old_run / "images" / f"{row['key']}.png").read_bytes()


def test_typed_columns_answer_queries_without_json(old_run: Path, tmp_path: Path):
    assert main(["export", str(old_run), "--format", "webdataset", "--to", str(tmp_path / "wds")]) == 0
    ledger = f"read_parquet('{tmp_path / 'wds' / 'results' / '*.parquet'}')"
    (mean,) = duckdb.sql(f"SELECT avg(compute['unet_evals']) FROM {ledger} WHERE status = 'ok'").fetchone()
    assert mean == 32
    likely = duckdb.sql(f"SELECT id FROM {ledger} WHERE scores['eval/classifier'] > 0.001 ORDER BY id").fetchall()
    assert likely == [("cat/3",)]
    (method,) = duckdb.sql(f"SELECT DISTINCT provenance.method.name FROM {ledger} WHERE status = 'ok'").fetchone()
    assert method == "doodl"
