"""A result row: its columns (the same in every output format) and how each outcome becomes one.

Every input row ends as exactly one result row: `ok` (the worker's result, its scores, compute and
provenance), `unaccepted` (an escalation ladder's item that no rung accepted, with its best image: jobs.ladder),
`failed` (attempts spent, or a permanent error) or `rejected` (never dispatched). Where rows live and how they
are merged is the ledger's business (jobs.ledger)."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from doodl_ray.jobs.reader import JobItem, RejectedRow
from doodl_ray.provenance import PROVENANCE_TYPE

STATUSES = ("ok", "unaccepted", "failed", "rejected")
WITH_IMAGES = ("ok", "unaccepted")
"""Statuses whose rows have images."""
SCORES_TYPE = pa.map_(pa.string(), pa.float64())
COUNTS_TYPE = pa.map_(pa.string(), pa.int64())

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()),  # as the input has it
    ("key", pa.string()),  # its storage key (jobs.keys): the name of its images in every format
    ("shard", pa.int32()),
    ("source", pa.string()),  # input file#row
    ("status", pa.string()),  # ok | unaccepted | failed | rejected
    ("image_uri", pa.string()),  # files format: the image's URI; packed formats: null (it is in the sample)
    ("initial_image_uri", pa.string()),  # the same for the unguided sample from the same noise
    ("prompt", pa.string()),
    ("target", pa.string()),
    ("class_label", pa.int64()),
    ("seed", pa.int64()),
    ("noise_hash", pa.string()),  # sha256 of the initial latents
    ("method", pa.string()),
    ("initial_loss", pa.float64()),  # guidance loss of the unoptimized sample (lower is better)
    ("final_loss", pa.float64()),  # of the returned (best) iterate
    ("best_iteration", pa.int32()),
    ("history", pa.list_(pa.float64())),  # loss per iteration
    ("terms", SCORES_TYPE),  # final per-term losses
    ("scores", SCORES_TYPE),  # readable scores, guide/* and, with an evaluation model, eval/*, eval_initial/*
    ("attempts", pa.int32()),
    ("error_type", pa.string()),
    ("error", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("seconds", pa.float64()),  # engine time for the item
    ("gpu_seconds", pa.float64()),  # the item's share of its batch's wall time, times GPUs per actor
    ("compute", COUNTS_TYPE),  # model evaluations the item cost, e.g. {"unet_forward": 240, "unet_evals": 240}
    ("rung", pa.int32()),  # a ladder's rung (1-based) that made the image: the accepting one, or the best one
    ("rung_evals", pa.list_(pa.int64())),  # a ladder's UNet evaluations of each rung the item ran, in order
    ("worker", pa.string()),
    ("session", pa.string()),  # which driver invocation computed it
    ("model", pa.string()),
    ("code_version", pa.string()),
    ("provenance", PROVENANCE_TYPE),  # the worker's setup (doodl_ray.provenance): model, guidance, method, code
    ("provenance_hash", pa.string()),  # its hash: rows with equal hashes came from the same setup
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


def _target_text(target: Any) -> str | None:
    return None if target is None else str(target)


def base_row(item: JobItem, context: RowContext, status: str, attempts: int) -> dict[str, Any]:
    """A row with the item's input fields and the session context; outcome fields unset."""
    return {
        "id": item.id, "key": item.key, "shard": item.shard, "source": item.source, "status": status,
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
        "id": row.id, "key": row.key, "shard": row.shard, "source": row.source, "status": "rejected",
        "prompt": row.prompt, "target": _target_text(row.target), "seed": row.seed, "attempts": 0,
        "error_type": "InvalidInput", "error": row.error, **asdict(context),
    }


TYPED = {f.name: f.type for f in RESULT_SCHEMA if f.name in ("terms", "scores", "compute", "provenance")}
"""Columns that ledgers of earlier releases kept as JSON text."""


def typed(table: pa.Table) -> pa.Table:
    """A ledger table with the JSON-text columns of earlier releases parsed into their types."""
    for name, kind in TYPED.items():
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            values = [json.loads(v) if v else None for v in table[name].to_pylist()]
            table = table.set_column(table.column_names.index(name), name, pa.array(values, kind))
    return table


def as_kept(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the ledger gives them back: the result schema's columns, each value in its column's type."""
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA).to_pylist(maps_as_pydicts="strict")


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Rows as a Parquet file of the result schema."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), buffer)
    return buffer.getvalue()


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as strict JSON: timestamps in ISO 8601, non-finite floats as null."""
    def value(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return v.isoformat()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [value(x) for x in v]
        return v

    return {k: value(v) for k, v in row.items()}
