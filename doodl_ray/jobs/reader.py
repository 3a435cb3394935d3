"""Input rows -> validated items, before any actor starts.

Problems with the input as a whole (no files, not Parquet, missing columns, wrong column types, duplicate
ids) are InvalidInput errors; problems with one row (a missing id, an empty prompt, a target outside
the classifier's classes) become rejected rows, recorded in the results like any other outcome, so one bad
row never sinks a job. Rows are sharded by position (files sorted by path, rows in file order), so the
same input always gives the same shards."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.keys import item_key
from doodl_ray.jobs.spec import FilterCondition, JobSpec

TargetCheck = Callable[[Any, Optional[str]], Any]
"""Raises InvalidInput for a target the guidance model cannot score (e.g. Guidance.validate_target)."""

_TYPE_CHECKS: dict[str, tuple[str, Callable[[pa.DataType], bool]]] = {
    "id": ("string or integer", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)),
    "prompt": ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "target": ("integer or string", lambda t: pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)),
    "reference": ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "class_label": ("integer", pa.types.is_integer),
    "seed": ("integer", pa.types.is_integer),
}


@dataclass(frozen=True)
class JobItem:
    """One unit of work: what the worker needs, plus where it came from."""

    id: str  # as the input has it
    key: str  # its storage key (jobs.keys.item_key): names its files in every output format
    seed: int
    shard: int
    source: str  # "file#row", for tracing a result back to its input row
    prompt: Optional[str] = None
    target: Any = None
    reference: Optional[str] = None
    class_label: Optional[int] = None


@dataclass(frozen=True)
class RejectedRow:
    """An input row that cannot be run; recorded with its reason instead of being computed."""

    id: Optional[str]
    key: Optional[str]
    shard: int
    source: str
    error: str
    prompt: Optional[str] = None
    target: Any = None
    seed: Optional[int] = None


@dataclass
class InputPlan:
    """Everything the driver needs from the input: items, rejections, and each shard's row ids."""

    items: list[JobItem]
    rejected: list[RejectedRow]
    shard_ids: dict[int, list[str]]  # shard -> ids of its rows (rejected rows included) in row order
    files: list[str]

    @property
    def rows(self) -> int:
        return len(self.items) + len(self.rejected)


def derive_seed(run_seed: int, item_id: str) -> int:
    """A stable 63-bit seed per (run seed, item id): independent of order, batch and worker."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}/{item_id}".encode()).digest()[:8], "big") >> 1


def list_input_files(uri: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The Parquet files a file, folder, glob or prefix names, sorted by path."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    if any(c in path for c in "*?["):
        files = sorted(fs.glob(path))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    elif fs.exists(path):
        files = [path]
    else:
        raise InvalidInput(f"input {uri} does not exist")
    if not files:
        raise InvalidInput(f"input {uri} holds no Parquet files")
    return fs, files


def _read_file(fs: fsspec.AbstractFileSystem, path: str, columns: dict[str, str], extra: set[str]) -> pa.Table:
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            for field, column in columns.items():
                if column not in schema.names:
                    raise InvalidInput(
                        f"{path}: no column {column!r} (input.columns.{field}); columns: {', '.join(schema.names)}"
                    )
                expected, ok = _TYPE_CHECKS[field]
                if not ok(schema.field(column).type):
                    raise InvalidInput(
                        f"{path}: column {column!r} (input.columns.{field}) is {schema.field(column).type}, "
                        f"expected {expected}"
                    )
            for column in extra - set(schema.names):
                raise InvalidInput(f"{path}: no column {column!r} (input.filter); columns: {', '.join(schema.names)}")
            return parquet.read(columns=sorted(set(columns.values()) | extra))
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InvalidInput(f"{path}: not found") from None
        raise InvalidInput(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from None


def _apply_filter(table: pa.Table, conditions: list[FilterCondition]) -> pa.Table:
    ops = {"eq": pc.equal, "ne": pc.not_equal, "lt": pc.less, "le": pc.less_equal, "gt": pc.greater, "ge": pc.greater_equal}
    mask = None
    for cond in conditions:
        (op, value), = cond.operators().items()
        column = table[cond.column]
        try:
            keep = pc.is_in(column, value_set=pa.array(value)) if op == "isin" else ops[op](column, pa.scalar(value))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise InvalidInput(f"input.filter on {cond.column!r}: {' '.join(str(exc).split())}") from None
        keep = pc.fill_null(keep, False)
        mask = keep if mask is None else pc.and_(mask, keep)
    return table if mask is None else table.filter(mask)


def read_input(spec: JobSpec, storage_options: dict[str, Any], check_target: TargetCheck | None = None) -> InputPlan:
    """Read, validate and shard the spec's input."""
    mapped = {f: c for f, c in spec.input.columns.model_dump().items() if c is not None}
    fs, files = list_input_files(spec.input.uri, storage_options)
    filter_columns = {c.column for c in spec.input.filter}
    tables = []
    for path in files:
        table = _read_file(fs, path, mapped, filter_columns)
        table = table.append_column("__source", pa.array([f"{path}#{i}" for i in range(table.num_rows)], pa.string()))
        tables.append(_apply_filter(table, spec.input.filter))
    rows = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    if spec.input.limit is not None:
        rows = rows.slice(0, spec.input.limit)
    if rows.num_rows == 0:
        raise InvalidInput(f"input {spec.input.uri} has no rows" + (" after input.filter" if spec.input.filter else ""))
    columns = {f: rows[c].to_pylist() for f, c in mapped.items()}
    sources = rows["__source"].to_pylist()
    return _plan(spec, columns, sources, files, check_target)


def _plan(spec: JobSpec, columns: dict[str, list], sources: list[str], files: list[str],
          check_target: TargetCheck | None) -> InputPlan:
    n = len(sources)
    ids = _ids(columns, n)
    duplicates = _duplicates(ids)
    if duplicates:
        raise InvalidInput(f"duplicate ids in column {spec.input.columns.id!r}: {', '.join(duplicates[:5])}"
                           + (f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""))
    keys = _keys(ids)
    items, rejected, shard_ids = [], [], {}
    for row in range(n):
        shard = row // spec.output.shard_size
        value = {f: col[row] for f, col in columns.items()}
        item_id, key, prompt, target = ids[row], keys[row], value.get("prompt"), value.get("target")
        seed = value.get("seed")
        error = _row_error(item_id, value)
        if error is None and check_target is not None and (target is not None or value.get("reference") is not None):
            try:
                check_target(target if target is not None else value.get("reference"), prompt)
            except InvalidInput as exc:
                error = str(exc)
        shard_ids.setdefault(shard, []).append(item_id)
        if error is not None:
            rejected.append(RejectedRow(item_id, key, shard, sources[row], error, prompt, target, seed))
            continue
        items.append(JobItem(
            id=item_id, key=key, seed=int(seed) if seed is not None else derive_seed(spec.seed, item_id),
            shard=shard, source=sources[row], prompt=prompt, target=target, reference=value.get("reference"),
            class_label=value.get("class_label"),
        ))
    return InputPlan(items, rejected, shard_ids, files)


def _ids(columns: dict[str, list], n: int) -> list[Optional[str]]:
    """Ids from the id column, or a stable hash of the row's mapped fields (identical rows numbered)."""
    if "id" in columns:
        return [None if v is None else str(v) for v in columns["id"]]
    seen: dict[str, int] = {}
    ids = []
    for row in range(n):
        content = json.dumps({f: col[row] for f, col in sorted(columns.items())}, sort_keys=True, default=str)
        digest = "h" + hashlib.sha256(content.encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids


def _duplicates(ids: list[Optional[str]]) -> list[str]:
    seen: set[str] = set()
    dups: dict[str, None] = {}
    for item_id in ids:
        if item_id and item_id in seen:  # rows without an id are rejected one by one, not duplicates
            dups[item_id] = None
        seen.add(item_id)  # type: ignore[arg-type]
    return list(dups)


def _keys(ids: list[Optional[str]]) -> list[Optional[str]]:
    """Each id's storage key; distinct ids must never share one (one would overwrite the other's files)."""
    keys = [item_key(i) if i else None for i in ids]
    owner: dict[str, str] = {}
    for item_id, key in zip(ids, keys):
        if key is not None and owner.setdefault(key, item_id) != item_id:  # type: ignore[arg-type]
            raise InvalidInput(f"ids {owner[key]!r} and {item_id!r} map to the same storage key {key!r}")
    return keys


def _row_error(item_id: Optional[str], value: dict[str, Any]) -> Optional[str]:
    if item_id is None or item_id == "":
        return "missing id"
    if "prompt" in value and (value["prompt"] is None or not value["prompt"].strip()):
        return "empty prompt"
    if "target" in value and value["target"] is None:
        return "missing target"
    if "target" in value and isinstance(value["target"], str) and not value["target"].strip():
        return "empty target"
    if "reference" in value and (value["reference"] is None or not value["reference"].strip()):
        return "missing reference"
    if "class_label" in value and value["class_label"] is None:
        return "missing class label"
    if value.get("seed") is not None and value["seed"] < 0:
        return f"seed {value['seed']} is negative"
    return None
