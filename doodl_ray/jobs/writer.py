"""The ledger and everything that writes it.

    OUTPUT/results/parts/shard-NNNNN/<token>.parquet  results of one batch, written as soon as it finishes
    OUTPUT/results/shard-NNNNN.parquet             a finished shard's rows (parts merged, one row per input row)
    OUTPUT/results/shard-NNNNN.done.json           the shard's done marker and stats (written last)
    OUTPUT/manifest.json                           spec, versions, start/end, totals
    (+ the images, laid out by the output format: jobs.formats)

Parts make finished work durable the moment a worker has it, so a driver killed at any point loses at
most the batches in flight; the done marker is written only after the shard's images are packed and its
shard file is written, so a marker always means a complete shard."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from doodl_ray.jobs.reader import JobItem, RejectedRow
from doodl_ray.jobs.storage import Storage

if TYPE_CHECKING:
    from doodl_ray.jobs.formats import OutputFormat, Samples

MANIFEST = "manifest.json"
STATUSES = ("ok", "failed", "rejected")

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()),  # as the input has it
    ("key", pa.string()),  # its storage key (jobs.keys): the name of its images in every format
    ("shard", pa.int32()),
    ("source", pa.string()),  # input file#row
    ("status", pa.string()),  # ok | failed | rejected
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
    ("terms", pa.string()),  # JSON: final per-term losses
    ("scores", pa.string()),  # JSON: readable scores, guide/* and, with an evaluation model, eval/*, eval_initial/*
    ("attempts", pa.int32()),
    ("error_type", pa.string()),
    ("error", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("seconds", pa.float64()),  # engine time for the item
    ("gpu_seconds", pa.float64()),  # the item's share of its batch's wall time, times GPUs per actor
    ("compute", pa.string()),  # JSON: model evaluations the item cost, e.g. {"unet_forward": 240, "guide_vjp": 8}
    ("worker", pa.string()),
    ("session", pa.string()),  # which driver invocation computed it
    ("model", pa.string()),
    ("code_version", pa.string()),
    ("provenance", pa.string()),  # JSON: the worker's setup (doodl_ray.provenance): model, guidance, method, code
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


def shard_key(shard: int) -> str:
    return f"results/shard-{shard:05d}.parquet"


def marker_key(shard: int) -> str:
    return f"results/shard-{shard:05d}.done.json"


def parts_prefix(shard: int) -> str:
    return f"results/parts/shard-{shard:05d}"


def ids_hash(ids: Iterable[str | None]) -> str:
    """Fingerprint of a shard's composition: a marker only counts for the same rows. Ids are joined by
    newlines, with backslashes and newlines in them escaped (ids without either hash as they always did)."""
    text = "\n".join(str(i).replace("\\", "\\\\").replace("\n", "\\n") for i in ids)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), buffer)
    return buffer.getvalue()


def read_rows(storage: Storage, key: str) -> list[dict[str, Any]]:
    """A ledger file's rows. Runs from before storage keys existed named an item's files by its id."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(key)))
    rows = table.to_pylist()
    if "key" not in table.column_names:
        for row in rows:
            row["key"] = row["id"]
    return rows


def write_part(storage: Storage, shard: int, token: str, rows: list[dict[str, Any]]) -> None:
    """Persist one batch's finished rows for a shard (worker side)."""
    storage.write_bytes(f"{parts_prefix(shard)}/{token}.parquet", to_parquet(rows))


def finalize_shard(storage: Storage, output_format: "OutputFormat", shard: int, rows: list[dict[str, Any]],
                   shard_ids_hash: str, spec_hash: str, samples: Optional["Samples"] = None) -> dict:
    """Pack the shard's images (from `samples`, or what the workers staged), write its results, then its
    done marker, then drop its parts and staging. Returns the marker."""
    rows = output_format.pack(storage, shard, rows, samples)
    storage.write_bytes(shard_key(shard), to_parquet(rows))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    marker = {"shard": shard, "rows": len(rows), **counts, "ids_hash": shard_ids_hash, "spec_hash": spec_hash,
              "format": output_format.name, "finished_at": now().isoformat()}
    storage.write_bytes(marker_key(shard), json.dumps(marker).encode())
    storage.delete_prefix(parts_prefix(shard))
    output_format.cleanup(storage, shard)
    return marker


def write_manifest(storage: Storage, manifest: dict[str, Any]) -> None:
    storage.write_bytes(MANIFEST, json.dumps(manifest, indent=2, default=str).encode())


def manifest_format(manifest: dict[str, Any]) -> str:
    """The output format a run was written in (runs from before formats existed wrote files)."""
    return manifest.get("spec", {}).get("output", {}).get("format", "files")


def read_manifest(storage: Storage) -> dict[str, Any] | None:
    """The run manifest, or None when the output holds no run yet."""
    try:
        return json.loads(storage.read_bytes(MANIFEST))
    except FileNotFoundError:
        return None
