"""Job spec, input validation, storage keys and error classification: no Ray, no network."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.reader import derive_seed, read_input
from doodl_ray.jobs.spec import load_spec, parse_spec
from doodl_ray.jobs.storage import Storage, is_transient

ROOT = Path(__file__).resolve().parents[1]


def spec_for(uri: str, tmp_path: Path, **columns: str):
    return parse_spec({
        "run_id": "t", "model": "m", "input": {"uri": uri, "columns": columns or {"id": "id", "prompt": "prompt"}},
        "output": {"uri": str(tmp_path / "out"), "shard_size": 3},
    })


def write(path: Path, **columns: list) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_example_specs_validate():
    for name in ("digits-demo.yaml", "tiny-s3.yaml", "sd15-classifier.yaml"):
        load_spec(ROOT / "jobs" / name)


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    spec.write_text("run_id: r\nmodel: m\ninput: {uri: x}\noutput: {uri: o}\nresources: {actorz: 2}\n")
    with pytest.raises(InvalidInput, match=r"resources\.actorz: Extra inputs are not permitted"):
        load_spec(spec)
    with pytest.raises(InvalidInput, match=r"resources\.actors: Input should be greater than or equal to 1"):
        load_spec(spec, ["resources={}", "resources.actors=0"])
    with pytest.raises(InvalidInput, match="run_id"):
        load_spec(spec, ["resources={}", "run_id=../x"])


def test_overrides_parse_yaml_values_and_secrets_are_masked(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    spec.write_text("run_id: r\nmodel: m\ninput: {uri: x}\noutput: {uri: s3://b/o}\n")
    job = load_spec(spec, ["resources.actors=4", "method.doodl.iterations=2", "storage.secret_access_key=hunter2",
                           "storage.endpoint_url=http://127.0.0.1:9"])
    assert job.resources.actors == 4 and job.method.doodl.iterations == 2
    assert "hunter2" not in str(job.public_dump()) and "hunter2" not in repr(job)
    assert job.storage.fsspec_options("s3://b/o")["secret"] == "hunter2"
    assert job.storage.fsspec_options("/local/path") == {}
    # resources, retries and timeouts may change between runs without breaking resume; the seed may not
    base = load_spec(spec).result_hash()
    assert load_spec(spec, ["resources.actors=8", "retries.attempts=9"]).result_hash() == base
    assert load_spec(spec, ["seed=1"]).result_hash() != base != job.result_hash()


def test_malformed_inputs_are_clear_errors(tmp_path: Path):
    good = write(tmp_path / "good.parquet", id=["a", "b"], prompt=["x", "y"])
    with pytest.raises(InvalidInput, match="no column 'caption'"):
        read_input(spec_for(good, tmp_path, id="id", prompt="caption"), {})
    wrong = write(tmp_path / "wrong.parquet", id=["a"], prompt=[3])
    with pytest.raises(InvalidInput, match="column 'prompt' .* is int64, expected string"):
        read_input(spec_for(wrong, tmp_path), {})
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        read_input(spec_for(str(tmp_path / "empty.parquet"), tmp_path), {})
    (tmp_path / "text.parquet").write_text("id,prompt\na,b\n")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        read_input(spec_for(str(tmp_path / "text.parquet"), tmp_path), {})
    norows = write(tmp_path / "norows.parquet", id=pa.array([], pa.string()), prompt=pa.array([], pa.string()))
    with pytest.raises(InvalidInput, match="has no rows"):
        read_input(spec_for(norows, tmp_path), {})
    dup = write(tmp_path / "dup.parquet", id=["a", "b", "a"], prompt=["x", "y", "z"])
    with pytest.raises(InvalidInput, match="duplicate ids in column 'id': a"):
        read_input(spec_for(dup, tmp_path), {})
    with pytest.raises(InvalidInput, match="does not exist"):
        read_input(spec_for(str(tmp_path / "nope.parquet"), tmp_path), {})


def test_bad_rows_are_rejected_and_sharding_is_positional(tmp_path: Path):
    ids = ["ok1", "../../x", "ok2", ".hidden", "ok3", None, "ok4", ""]
    path = write(tmp_path / "rows.parquet", id=ids, prompt=["p", "p", " ", "p", "p", "p", "p", "p"])
    plan = read_input(spec_for(path, tmp_path), {})
    assert [i.id for i in plan.items] == ["ok1", "../../x", ".hidden", "ok3", "ok4"]
    reasons = {r.id: r.error for r in plan.rejected}
    assert reasons == {"ok2": "empty prompt", None: "missing id", "": "missing id"}
    assert plan.shard_ids == {0: ["ok1", "../../x", "ok2"], 1: [".hidden", "ok3", None], 2: ["ok4", ""]}
    assert plan.items[0].seed == derive_seed(0, "ok1") != derive_seed(1, "ok1")


def test_ids_without_column_filters_limit_and_folders(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "b.parquet", prompt=["same", "same"], split=["test", "test"], seed=[7, 7])
    write(folder / "a.parquet", prompt=["one", "two"], split=["train", "test"], seed=[1, 2])
    spec = parse_spec({
        "run_id": "t", "model": "m", "output": {"uri": str(tmp_path / "o")},
        "input": {"uri": str(folder), "columns": {"prompt": "prompt", "seed": "seed"},
                  "filter": [{"column": "split", "in": ["test"]}], "limit": 3},
    })
    plan = read_input(spec, {})
    assert [i.prompt for i in plan.items] == ["two", "same", "same"]
    assert [i.seed for i in plan.items] == [2, 7, 7]
    assert plan.items[2].id == plan.items[1].id + "-2" and plan.items[0].source.endswith("a.parquet#1")
    assert read_input(spec, {}).items == plan.items  # stable


def test_storage_keys_cannot_leave_the_prefix(tmp_path: Path):
    storage = Storage(str(tmp_path / "out"))
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", "", "a\\..\\b"):
        with pytest.raises(InvalidInput):
            storage.write_bytes(key, b"x")
    storage.write_bytes("images/a.png", b"x")
    assert storage.read_bytes("images/a.png") == b"x" and storage.list("images") == ["images/a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_error_classification():
    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError()) and is_transient(OSError(16, "SlowDown"))
    assert not is_transient(FileNotFoundError()) and not is_transient(PermissionError())
    assert not is_transient(InvalidInput("bad")) and not is_transient(ValueError())
