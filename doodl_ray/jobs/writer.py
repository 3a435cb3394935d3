"""The output layout and everything that writes it.

    OUTPUT/images/<id>.png                         one image per successful item
    OUTPUT/results/parts/shard-NNNNN/<token>.parquet  results of one batch, written as soon as it finishes
    OUTPUT/results/shard-NNNNN.parquet             a finished shard's rows (parts merged, one row per input row)
    OUTPUT/results/shard-NNNNN.done.json           the shard's done marker and stats (written last)
    OUTPUT/manifest.json                           spec, versions, start/end, totals

Parts make finished work durable the moment a worker has it, so a driver killed at any point loses at
most the batches in flight; the done marker is written only after the shard file, so a marker always
means a complete shard."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

import doodl_ray
from doodl_ray.jobs.reader import JobItem, RejectedRow
from doodl_ray.jobs.storage import Storage

MANIFEST = "manifest.json"
STATUSES = ("ok", "failed", "rejected")

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("shard", pa.int32()),
    ("source", pa.string()),  # input file#row
    ("status", pa.string()),  # ok | failed | rejected
    ("image_uri", pa.string()),
    ("prompt", pa.string()),
    ("target", pa.string()),
    ("class_label", pa.int64()),
    ("seed", pa.int64()),
    ("method", pa.string()),
    ("initial_loss", pa.float64()),  # guidance loss of the unoptimized sample (lower is better)
    ("final_loss", pa.float64()),  # of the returned (best) iterate
    ("best_iteration", pa.int32()),
    ("history", pa.list_(pa.float64())),  # loss per iteration
    ("terms", pa.string()),  # JSON: final per-term losses
    ("scores", pa.string()),  # JSON: readable scores, guide/* and, with an evaluation model, eval/*, eval_initial/*
    ("attempts", pa.int32()),
    ("error_type", pa.string()),
    ("error", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("seconds", pa.float64()),  # engine time for the item
    ("gpu_seconds", pa.float64()),  # the item's share of its batch's wall time, times GPUs per actor
    ("worker", pa.string()),
    ("session", pa.string()),  # which driver invocation computed it
    ("model", pa.string()),
    ("code_version", pa.string()),
    ("spec_hash", pa.string()),
])


@dataclass(frozen=True)
class RowContext:
    """Fields every result row of one driver session shares."""

    session: str
    spec_hash: str
    method: str
    model: str
    code_version: str


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(doodl_ray.__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{doodl_ray.__version__}+{sha}" if sha else doodl_ray.__version__


def _target_text(target: Any) -> str | None:
    return None if target is None else str(target)


def base_row(item: JobItem, context: RowContext, status: str, attempts: int) -> dict[str, Any]:
    """A row with the item's input fields and the session context; outcome fields unset."""
    return {
        "id": item.id, "shard": item.shard, "source": item.source, "status": status,
        "prompt": item.prompt, "target": _target_text(item.target if item.target is not None else item.reference),
        "class_label": item.class_label, "seed": item.seed, "attempts": attempts, **asdict(context),
    }


def failure_row(item: JobItem, context: RowContext, status: str, error: BaseException | str, attempts: int) -> dict:
    """The final row of an item that could not be computed."""
    kind = error if isinstance(error, str) else type(error).__name__
    text = " ".join(str(error).split()) if not isinstance(error, str) else error
    return {**base_row(item, context, status, attempts), "error_type": kind, "error": text[:2000], "finished_at": now()}


def rejected_row(row: RejectedRow, context: RowContext) -> dict[str, Any]:
    """The row of an input row rejected before dispatch."""
    return {
        "id": row.id, "shard": row.shard, "source": row.source, "status": "rejected", "prompt": row.prompt,
        "target": _target_text(row.target), "seed": row.seed, "attempts": 0, "error_type": "InvalidInput",
        "error": row.error, **asdict(context),
    }


def image_key(item_id: str) -> str:
    return f"images/{item_id}.png"


def shard_key(shard: int) -> str:
    return f"results/shard-{shard:05d}.parquet"


def marker_key(shard: int) -> str:
    return f"results/shard-{shard:05d}.done.json"


def parts_prefix(shard: int) -> str:
    return f"results/parts/shard-{shard:05d}"


def ids_hash(ids: Iterable[str | None]) -> str:
    """Fingerprint of a shard's composition: a marker only counts for the same rows."""
    return hashlib.sha256("\n".join(str(i) for i in ids).encode()).hexdigest()[:16]


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), buffer)
    return buffer.getvalue()


def read_rows(storage: Storage, key: str) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(storage.read_bytes(key))).to_pylist()


def write_part(storage: Storage, shard: int, token: str, rows: list[dict[str, Any]]) -> None:
    """Persist one batch's finished rows for a shard (worker side)."""
    storage.write_bytes(f"{parts_prefix(shard)}/{token}.parquet", to_parquet(rows))


def finalize_shard(storage: Storage, shard: int, rows: list[dict[str, Any]], shard_ids_hash: str, spec_hash: str) -> dict:
    """Write the shard's results, then its done marker, then drop its parts. Returns the marker."""
    storage.write_bytes(shard_key(shard), to_parquet(rows))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    marker = {"shard": shard, "rows": len(rows), **counts, "ids_hash": shard_ids_hash, "spec_hash": spec_hash,
              "finished_at": now().isoformat()}
    storage.write_bytes(marker_key(shard), json.dumps(marker).encode())
    storage.delete_prefix(parts_prefix(shard))
    return marker


def write_manifest(storage: Storage, manifest: dict[str, Any]) -> None:
    storage.write_bytes(MANIFEST, json.dumps(manifest, indent=2, default=str).encode())


def read_manifest(storage: Storage) -> dict[str, Any] | None:
    """The run manifest, or None when the output holds no run yet."""
    try:
        return json.loads(storage.read_bytes(MANIFEST))
    except FileNotFoundError:
        return None
