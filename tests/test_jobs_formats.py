"""Output formats end to end: the shipped digits model (8 steps, 1 DOODL iteration) on 2 real Ray actors,
a dozen rows with ids as users have them, run once per format; each output read back by its format's
own reader (webdataset, Hugging Face datasets, plain tarfile) with every row present once and the same
pixels as the files layout; the runs' provenance identical; exports between formats (local and S3)."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import shutil
import tarfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from doodl_ray.cli import main
from doodl_ray.errors import InvalidInput
from doodl_ray.jobs import run_job
from doodl_ray.jobs.export import export_run
from doodl_ray.jobs.formats import KINDS
from doodl_ray.jobs.keys import item_key
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.jobs.storage import Storage
from doodl_ray.provenance import identity
from tests.job_helpers import read_results
from tests.ray_session import ROOT, ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401

DIGITS = ROOT / "doodl_ray" / "assets" / "digits"
IDS = ["../../x", "a b", "a_b", "cat/001", "https://x.y/z?q=1", "日本", "x" * 300, "item.1", "d0", "d1", "d2", "None"]
MISSING = [None, "", ""]  # rejected rows, in the last shard with the id "None"
FORMATS = ("files", "webdataset", "parquet")
SAME_EVERY_RUN = ("id", "key", "shard", "status", "prompt", "target", "seed", "noise_hash", "method", "initial_loss",
                  "final_loss", "best_iteration", "history", "terms", "scores", "compute", "model", "provenance",
                  "provenance_hash", "spec_hash")
"""Row fields that depend only on the spec and the item (not on when, where or by which session it ran)."""


def digits_spec(input_uri: str, output_uri: str, fmt: str) -> dict:
    return {
        "run_id": "formats", "model": str(DIGITS / "balanced"), "seed": 3,
        "input": {"uri": input_uri, "columns": {"id": "id", "target": "target", "prompt": "prompt"}},
        "guidance": {"type": "classifier", "model": str(DIGITS / "guide.pt"), "crops": {"count": 1}},
        "evaluation": {"type": "classifier", "model": str(DIGITS / "judge.pt")},
        "method": {"name": "doodl", "sampler": {"steps": 8}, "doodl": {"iterations": 1, "optimizer": "normalized"}},
        "output": {"uri": output_uri, "shard_size": 5, "format": fmt},
        "resources": {"actors": 2, "gpus_per_actor": 1, "batch_size": 2},
        "retries": {"attempts": 2, "base_delay": 0.05},
    }


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory) -> dict[str, Path]:
    """One run per format of the same spec; rows without an id are rejected rows in every ledger."""
    root = tmp_path_factory.mktemp("formats")
    ids = [*IDS, *MISSING]
    pq.write_table(pa.table({"id": ids, "target": [i % 10 for i in range(len(ids))],
                             "prompt": [f"digit {i % 10}" for i in range(len(ids))]}), root / "in.parquet")
    outputs = {}
    for fmt in FORMATS:
        outputs[fmt] = root / fmt
        summary = run_job(parse_spec(digits_spec(str(root / "in.parquet"), str(outputs[fmt]), fmt)), progress=False)
        assert (summary.ok, summary.failed, summary.rejected) == (len(IDS), 0, len(MISSING))
    return outputs


def ledger(output: Path) -> dict[str, dict]:
    rows = [r for path in sorted(output.glob("results/shard-*.parquet"))
            for r in pq.read_table(path).to_pylist(maps_as_pydicts="strict")]
    assert len(rows) == len(IDS) + len(MISSING)  # each input row once
    assert sorted(r["id"] for r in rows if r["id"]) == sorted(IDS)
    assert [r["error"] for r in rows if not r["id"]] == ["missing id"] * len(MISSING)
    return {r["id"]: r for r in rows if r["status"] == "ok"}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def files_images(output: Path) -> dict[str, dict[str, bytes]]:
    """id -> kind -> PNG bytes, from the files layout's URIs."""
    return {i: {kind: Path(row[f"{kind}_uri"]).read_bytes() for kind in KINDS} for i, row in ledger(output).items()}


def test_files_layout_rows_and_images(runs):
    rows = ledger(runs["files"])
    assert sorted(rows) == sorted(IDS)
    for item_id, row in rows.items():
        assert row["key"] == item_key(item_id)
        assert row["image_uri"] == str(runs["files"] / "images" / f"{row['key']}.png")
        assert row["initial_image_uri"] == str(runs["files"] / "images" / f"{row['key']}.initial.png")
        assert pixels(Path(row["image_uri"]).read_bytes()).shape == (16, 16)
        compute = row["compute"]  # a map column: no JSON to parse
        assert len(row["noise_hash"]) == 64 and all(isinstance(n, int) for n in compute.values())
        assert sum(compute.values()) > 0
    assert not list(runs["files"].glob("staging")) and not list(runs["files"].rglob(".tmp-*"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_ledger_columns_are_typed_for_duckdb(runs, fmt):
    """Scores and compute are map columns, history a list, provenance a struct: DuckDB asks without JSON."""
    import duckdb

    ledger_files, rows = f"read_parquet('{runs[fmt] / 'results' / '*.parquet'}')", ledger(runs[fmt])
    (mean,) = duckdb.sql(f"SELECT avg(compute['unet_evals']) FROM {ledger_files} WHERE status = 'ok'").fetchone()
    assert mean == pytest.approx(sum(r["compute"]["unet_evals"] for r in rows.values()) / len(rows)) and mean > 0
    sure = duckdb.sql(f"SELECT id FROM {ledger_files} WHERE scores['eval/classifier'] > 0.9").fetchall()
    assert sorted(i for (i,) in sure) == sorted(i for i, r in rows.items() if r["scores"]["eval/classifier"] > 0.9)
    (steps,) = duckdb.sql(f"SELECT max(len(history)) FROM {ledger_files} WHERE provenance.method.name = 'doodl'"
                          ).fetchone()
    assert steps == max(len(r["history"]) for r in rows.values())


def test_webdataset_reads_back_with_webdataset_and_tarfile(runs):
    import webdataset as wds

    out, reference, rows = runs["webdataset"], files_images(runs["files"]), ledger(runs["webdataset"])
    tars = sorted(glob.glob(str(out / "data" / "*.tar")))
    assert [Path(t).name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    by_id = {json.loads(s["json"])["id"]: s for s in samples}
    assert len(samples) == len(by_id) == len(IDS) and sorted(by_id) == sorted(IDS)
    for item_id, sample in by_id.items():
        assert sample["__key__"] == rows[item_id]["key"]
        assert np.array_equal(pixels(sample["png"]), pixels(reference[item_id]["image"]))
        assert np.array_equal(pixels(sample["initial.png"]), pixels(reference[item_id]["initial_image"]))
        assert sample["txt"].decode() == rows[item_id]["prompt"]
        fields = json.loads(sample["json"])
        assert {k: fields[k] for k in SAME_EVERY_RUN} == {k: rows[item_id][k] for k in SAME_EVERY_RUN}
        assert rows[item_id]["image_uri"] is None  # the image is in the sample
    with tarfile.open(tars[0]) as tar:
        key = rows[IDS[0]]["key"]
        assert tar.getnames()[:4] == [f"{key}.png", f"{key}.initial.png", f"{key}.json", f"{key}.txt"]
    assert not (out / "staging").exists() and not list(out.rglob(".tmp-*"))


def test_parquet_loads_with_datasets_images_decoded(runs, tmp_path):
    import datasets

    out, reference = runs["parquet"], files_images(runs["files"])
    files = sorted(glob.glob(str(out / "data" / "*.parquet")))
    data = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(data.features["image"], datasets.Image) and len(data) == len(IDS)
    assert sorted(data["id"]) == sorted(IDS)
    for row in data:
        assert isinstance(row["image"], Image.Image)
        assert np.array_equal(np.asarray(row["image"]), pixels(reference[row["id"]]["image"]))
        assert np.array_equal(np.asarray(row["initial_image"]), pixels(reference[row["id"]]["initial_image"]))
    assert not (out / "staging").exists()


def test_same_spec_and_seed_give_identical_provenance_and_images(runs):
    """The three runs share spec and seed (only the output differs): same provenance, same pixels."""
    rows = {fmt: ledger(out) for fmt, out in runs.items()}
    for item_id in IDS:
        first = {k: rows["files"][item_id][k] for k in SAME_EVERY_RUN}
        assert all({k: rows[fmt][item_id][k] for k in SAME_EVERY_RUN} == first for fmt in FORMATS)
    setup = rows["files"][IDS[0]]["provenance"]  # a struct column
    assert setup["model"] == {"ref": str(DIGITS / "balanced"), "sha256": identity(str(DIGITS / "balanced"))["sha256"],
                              "revision": None}
    guide = hashlib.sha256((DIGITS / "guide.pt").read_bytes()).hexdigest()
    assert setup["guidance"]["files"] == [{"ref": str(DIGITS / "guide.pt"), "sha256": guide, "revision": None}]
    assert setup["method"]["name"] == "doodl" and setup["runtime"]["device"] == "cpu"
    assert len({r["provenance_hash"] for r in rows["files"].values()}) == 1
    assert len({r["noise_hash"] for r in rows["files"].values()}) == len(IDS)  # seeds differ per id


def test_export_between_formats_keeps_rows_and_images(runs, s3_endpoint, tmp_path):
    """files -> webdataset on S3 (through the CLI) -> parquet locally -> files: same rows, same PNG bytes."""
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    source_rows, source_images = ledger(runs["files"]), files_images(runs["files"])
    wds_uri = f"s3://{bucket}/wds"
    assert main(["export", str(runs["files"]), "--format", "webdataset", "--to", wds_uri,
                 "--endpoint-url", s3_endpoint.url]) == 0
    assert sorted(fs.ls(f"{bucket}/wds/data")) == [f"{bucket}/wds/data/0000{i}.tar" for i in range(3)]
    options = {"endpoint_url": s3_endpoint.url}
    export_run(Storage(wds_uri, options), Storage(str(tmp_path / "pq")), "parquet")
    export_run(Storage(str(tmp_path / "pq")), Storage(str(tmp_path / "files")), "files")
    final = ledger(tmp_path / "files")
    located = ("image_uri", "initial_image_uri")
    for item_id, row in source_rows.items():
        assert {k: v for k, v in final[item_id].items() if k not in located} == \
            {k: v for k, v in row.items() if k not in located}
    assert files_images(tmp_path / "files") == source_images
    assert not fs.glob(f"{bucket}/wds/staging/**")
    status = io.StringIO()
    with redirect_stdout(status):
        assert main(["status", wds_uri, "--endpoint-url", s3_endpoint.url, "--json"]) == 0
    counts = json.loads(status.getvalue())
    assert (counts["state"], counts["ok"], counts["rejected"], counts["shards_done"]) == \
        ("finished", len(IDS), len(MISSING), 3)
    sheet = tmp_path / "sheet.png"  # the contact sheet reads images out of the tars
    assert main(["sheet", wds_uri, "--endpoint-url", s3_endpoint.url, "--out", str(sheet)]) == 0
    assert Image.open(sheet).size[0] > 0
    assert read_results(fs, f"{bucket}/wds")[0]["image_uri"] is None


def test_a_run_from_before_keys_exports_and_sheets(runs, tmp_path):
    """Its ledger has no key column (files were named by id, and ids were plain names): read as key = id."""
    old = Path(shutil.copytree(runs["files"], tmp_path / "old"))
    plain = [i for i in IDS if item_key(i) == i]
    for path in old.glob("results/shard-*.parquet"):
        table = pq.read_table(path)
        keep = pa.array([i in plain for i in table["id"].to_pylist()])
        pq.write_table(table.filter(keep).drop_columns(["key"]), path)
    export_run(Storage(str(old)), Storage(str(tmp_path / "wds")), "webdataset")
    with tarfile.open(tmp_path / "wds" / "data" / "00001.tar") as tar:
        assert {name.split(".")[0] for name in tar.getnames()} == {i for i in plain if i in IDS[5:10]}
    assert main(["sheet", str(old), "--out", str(tmp_path / "sheet.png")]) == 0


def test_a_run_refuses_an_output_in_another_format_and_export_an_unfinished_run(runs, tmp_path):
    data = digits_spec(str(runs["files"].parent / "in.parquet"), str(runs["files"]), "parquet")
    with pytest.raises(InvalidInput, match="holds run 'formats' in the files format, not parquet; `doodl-ray export`"):
        run_job(parse_spec(data), progress=False)
    unfinished = shutil.copytree(runs["files"], tmp_path / "unfinished")
    (unfinished / "results" / "shard-00001.done.json").unlink()
    with pytest.raises(InvalidInput, match=r"not finished \(2 of 3 shards done\)"):
        export_run(Storage(str(unfinished)), Storage(str(tmp_path / "never")), "parquet")
    assert not (tmp_path / "never").exists()
