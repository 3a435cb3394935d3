"""End to end on local Ray (2 actors on logical GPUs) and a real S3 endpoint (moto's server over HTTP):
a tiny real model, input and models on S3, images and results back on S3, one row per input row."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from doodl_ray.cli import main
from doodl_ray.errors import InvalidInput
from doodl_ray.jobs import run_job
from doodl_ray.jobs.spec import parse_spec
from tests.job_helpers import job, put_table, read_results
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401
from tests.tiny_models import save_tiny_classifier, save_tiny_pixel


def test_tiny_model_job_on_s3(ray_session, s3_endpoint, tmp_path: Path):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    save_tiny_pixel(tmp_path / "pixel", channels=3, size=16)
    save_tiny_classifier(tmp_path / "classifier.pt", channels=3, classes=10, size=16)
    save_tiny_classifier(tmp_path / "judge.pt", channels=3, classes=10, size=16, seed=5)
    fs.put(str(tmp_path / "pixel"), f"{bucket}/models/pixel", recursive=True)
    fs.put_file(str(tmp_path / "classifier.pt"), f"{bucket}/models/classifier.pt")
    fs.put_file(str(tmp_path / "judge.pt"), f"{bucket}/models/judge.pt")
    ids = [f"item-{i:02d}" for i in range(21)] + ["../../escape", "wrong-class", None]
    put_table(fs, f"{bucket}/in/part-0.parquet", id=ids, target=[i % 10 for i in range(22)] + [12, 1])
    spec = parse_spec(job(
        bucket, s3_endpoint.url, model=f"s3://{bucket}/models/pixel", processor={"name": "engine"},
        guidance={"type": "classifier", "model": f"s3://{bucket}/models/classifier.pt", "crops": {"count": 1}},
        evaluation={"type": "classifier", "model": f"s3://{bucket}/models/judge.pt", "crops": {"count": 0}},
        method={"name": "doodl", "sampler": {"steps": 3}, "doodl": {"iterations": 2}},
        input={"columns": {"id": "id", "target": "target"}}, resources={"batch_size": 4, "gpu_hourly_price": 3.6},
    ))
    summary = run_job(spec, progress=False)
    assert (summary.ok, summary.failed, summary.rejected, summary.computed) == (22, 0, 2, 22)
    assert summary.cost["items_done"] == 22 and summary.cost["gpu_seconds"] > 0
    assert summary.cost["estimated_usd"] == pytest.approx(summary.cost["gpu_seconds"] / 1000)
    assert "GPU" in summary.text()

    rows = read_results(fs, f"{bucket}/out")
    assert sorted(r["id"] for r in rows if r["id"]) == sorted(ids[:-1]) and len(rows) == len(ids)
    by_id = {r["id"]: r for r in rows}
    assert by_id[None]["error"] == "missing id"
    assert "outside the classifier's 10 classes" in by_id["wrong-class"]["error"]
    for item_id in ids[:22]:
        row = by_id[item_id]
        assert row["status"] == "ok" and row["attempts"] == 1 and len(row["history"]) >= 2
        assert row["image_uri"] == f"s3://{bucket}/out/images/{row['key']}.png"
        assert Image.open(io.BytesIO(fs.cat_file(row["image_uri"]))).size == (16, 16)
        assert set(row["scores"]) == {"guide/classifier", "eval/classifier", "eval_initial/classifier"}
    keys = fs.find(bucket)  # the id "../../escape" is an image under out/images/ like any other
    assert all(k.startswith((f"{bucket}/out/", f"{bucket}/in/", f"{bucket}/models/")) for k in keys)
    assert by_id["../../escape"]["image_uri"].startswith(f"s3://{bucket}/out/images/escape~")
    assert not fs.glob(f"{bucket}/out/results/parts/**")
    manifest = json.loads(fs.cat_file(f"{bucket}/out/manifest.json"))
    assert manifest["state"] == "finished" and manifest["totals"]["ok"] == 22
    assert manifest["cost"] == summary.cost

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", f"s3://{bucket}/out", "--endpoint-url", s3_endpoint.url, "--json"]) == 0
    status = json.loads(out.getvalue())
    assert (status["ok"], status["rejected"], status["pending"], status["shards_done"]) == (22, 2, 0, 3)

    sheet = tmp_path / "sheet.png"  # columns = the 10 targets; 22 items -> up to 3 per target, one row each
    assert main(["sheet", f"s3://{bucket}/out", "--endpoint-url", s3_endpoint.url, "--out", str(sheet)]) == 0
    width, height = Image.open(sheet).size
    assert width > 10 * 16 * 4 and 3 * 16 * 4 < height < 4 * 16 * 4

    again = run_job(spec, progress=False)  # resume: everything is done
    assert (again.computed, again.resumed, again.ok) == (0, 22, 22)


def test_resume_force_and_spec_change(ray_session, s3_endpoint, tmp_path: Path):
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(6)]}), tmp_path / "in.parquet")
    spec = job("unused", s3_endpoint.url, input={"uri": str(tmp_path / "in.parquet")},
               output={"uri": str(tmp_path / "out")}, resources={"actors": 1})
    first = run_job(parse_spec(spec), progress=False)
    assert (first.computed, first.ok) == (6, 6)
    forced = run_job(parse_spec(spec), force=True, progress=False)
    assert (forced.computed, forced.resumed) == (6, 0)
    with pytest.raises(InvalidInput, match="different spec"):
        run_job(parse_spec({**spec, "seed": 1}), progress=False)
    assert not [p for p in tmp_path.rglob(".tmp-*")]
