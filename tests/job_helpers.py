"""Small no-op jobs on the S3 endpoint and their results, for the job tests."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq


def read_results(fs, prefix: str) -> list[dict]:
    fs.invalidate_cache()
    rows = []
    for path in sorted(fs.glob(f"{prefix}/results/shard-*.parquet")):
        rows += pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist(maps_as_pydicts="strict")
    return rows


def job(bucket: str, endpoint: str, **overrides) -> dict:
    """A noop job spec on S3 (the fault tests reuse it)."""
    spec = {
        "run_id": "t", "model": "unused", "input": {"uri": f"s3://{bucket}/in/", "columns": {"id": "id"}},
        "output": {"uri": f"s3://{bucket}/out", "shard_size": 10}, "storage": {"endpoint_url": endpoint},
        "processor": {"name": "noop"}, "resources": {"actors": 2, "gpus_per_actor": 1, "batch_size": 2},
        "retries": {"attempts": 3, "base_delay": 0.05, "max_delay": 0.2},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def put_table(fs, path: str, **columns: list) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    fs.pipe_file(path, buffer.getvalue())
