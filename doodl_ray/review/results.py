"""One run's results, read once into a pyarrow table for review: finished shards plus the parts of open
shards (an id with several rows keeps its best: ok beats failed beats rejected, then the latest), with each
score of the `scores` JSON as a numeric column and the prompt category joined from the run's input.

Images are reached only through the URIs the rows recorded, and only when such a URI names a key under
the run's own `images/` prefix, so nothing a reviewer sends (an id, a path) ever becomes a file path."""

from __future__ import annotations

import io
import json
import posixpath
import sys
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.storage import Storage, check_key
from doodl_ray.jobs.writer import read_manifest

SCORE_PREFIX = "score:"
"""Column name prefix of a score parsed out of the `scores` JSON (e.g. `score:eval/classifier`)."""
NUMERIC = ("initial_loss", "final_loss", "best_iteration", "seconds")
"""Result columns a reviewer can sort and filter by, besides the scores."""
_COLUMNS = ("id", "shard", "status", "image_uri", "initial_image_uri", "prompt", "target", "class_label", "seed",
            "method", "initial_loss", "final_loss", "best_iteration", "history", "scores", "attempts", "error_type",
            "error", "seconds", "finished_at")
_RANK = {"ok": 2, "failed": 1, "rejected": 0}
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass(frozen=True)
class Image:
    """An image's bytes and media type."""

    data: bytes
    mimetype: str


class RunResults:
    """A run's output opened for review. `table` holds one row per item, in shard order."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, category_column: str = "category"):
        self.storage = Storage(uri, storage_options)
        manifest = read_manifest(self.storage)
        if manifest is None:
            raise InvalidInput(f"{uri} holds no run (no {self.storage.url('manifest.json')})")
        self.manifest = manifest
        self.run_id = str(manifest.get("run_id") or uri)
        spec = manifest.get("spec") or {}
        recorded = str((spec.get("output") or {}).get("uri") or "").rstrip("/")
        # the prefixes a recorded image URI may start with: where the run was written, and where it is now
        self._prefixes = tuple(f"{p}/" for p in {recorded, self.storage.uri} if p)
        self.table = self._read_rows()
        self.table = self._parse_scores(self.table)
        self.table = self._join_category(self.table, spec, storage_options or {}, category_column)
        self._row_of = {item_id: i for i, item_id in enumerate(self.table["id"].to_pylist())}

    # ---- reading -----------------------------------------------------------------------------------

    def _read_rows(self) -> pa.Table:
        keys = self.storage.list("results", ".parquet")
        done = {posixpath.basename(k).removesuffix(".done.json") for k in self.storage.list("results", ".done.json")}
        # a finished shard's parts are already merged into its file (and normally deleted)
        keys = [k for k in keys if "/parts/" not in k or k.split("/")[2] not in done]
        tables = [self._read_table(k) for k in keys]
        if not tables:
            return pa.table({c: pa.array([], pa.string()) for c in ("id", "status", "image_uri")})
        table = pa.concat_tables(tables, promote_options="default")
        return _best_per_id(table)

    def _read_table(self, key: str) -> pa.Table:
        file = pq.ParquetFile(io.BytesIO(self.storage.read_bytes(key)))
        return file.read(columns=[c for c in _COLUMNS if c in file.schema_arrow.names])

    @staticmethod
    def _parse_scores(table: pa.Table) -> pa.Table:
        """Each key of the `scores` JSON as a float column `score:<key>` (null where a row lacks it)."""
        if "scores" not in table.column_names:
            return table
        parsed = [json.loads(s) if s else {} for s in table["scores"].to_pylist()]
        names = sorted({k for row in parsed for k in row})
        for name in names:
            values = [row.get(name) for row in parsed]
            table = table.append_column(SCORE_PREFIX + name, pa.array(values, pa.float64()))
        return table

    def _join_category(self, table: pa.Table, spec: dict, options: dict, column: str) -> pa.Table:
        """The prompt category from the run's input files, joined by id (results keep prompt and target, not
        the input's other columns). Absent when the input has no such column or names no id column."""
        id_column = ((spec.get("input") or {}).get("columns") or {}).get("id")
        files = self.manifest.get("input_files") or []
        if not id_column or not files or table.num_rows == 0:
            return table
        parts = []
        try:
            for file in files:
                fs, path = fsspec.core.url_to_fs(file, **(options if "://" in file else {}))
                schema = pq.read_schema(path, filesystem=fs)
                if column in schema.names and id_column in schema.names:
                    part = pq.read_table(path, columns=[id_column, column], filesystem=fs)
                    parts.append(pa.table({"id": pc.cast(part[id_column], pa.string()),
                                           "category": pc.cast(part[column], pa.string())}))
        except (OSError, pa.ArrowException) as exc:
            print(f"doodl-ray review: no prompt categories ({type(exc).__name__}: {exc})", file=sys.stderr)
            return table
        if not parts:
            return table
        categories = pa.concat_tables(parts)
        index = pc.index_in(table["id"], value_set=categories["id"])
        return table.append_column("category", pc.take(categories["category"], index))

    # ---- lookups -----------------------------------------------------------------------------------

    @property
    def score_columns(self) -> list[str]:
        return [c for c in self.table.column_names if c.startswith(SCORE_PREFIX)]

    @property
    def numeric_columns(self) -> list[str]:
        """Everything a gallery can sort or filter by."""
        return [c for c in NUMERIC if c in self.table.column_names] + self.score_columns

    def row(self, item_id: str) -> dict[str, Any] | None:
        """An item's row, or None for an id the run does not have."""
        index = self._row_of.get(item_id)
        return None if index is None else self.table.slice(index, 1).to_pylist()[0]

    def image_key(self, uri: str | None) -> str | None:
        """The storage key of a recorded image URI, or None unless it lies under this run's `images/`."""
        if not uri:
            return None
        for prefix in self._prefixes:
            if uri.startswith(prefix):
                key = uri[len(prefix):]
                try:
                    check_key(key)
                except InvalidInput:
                    return None
                ext = posixpath.splitext(key)[1].lower()
                return key if key.startswith("images/") and ext in _IMAGE_TYPES else None
        return None

    def image(self, item_id: str, column: str = "image_uri") -> Image | None:
        """The image an item's row records in `column` (image_uri or initial_image_uri), or None."""
        row = self.row(item_id)
        key = self.image_key(row.get(column)) if row else None
        if key is None:
            return None
        try:
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            return None
        return Image(data, _IMAGE_TYPES[posixpath.splitext(key)[1].lower()])

    def has_image(self, item_id: str, column: str) -> bool:
        row = self.row(item_id)
        key = self.image_key(row.get(column)) if row else None
        return key is not None and self.storage.exists(key)


def _best_per_id(table: pa.Table) -> pa.Table:
    """One row per id: where parts recorded an id twice, ok beats failed beats rejected, then the latest."""
    counts = pc.value_counts(table["id"])
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return table
    ids = table["id"].to_pylist()
    statuses = table["status"].to_pylist()
    finished = table["finished_at"].to_pylist() if "finished_at" in table.column_names else [None] * len(ids)
    best: dict[str, int] = {}
    for i in np.flatnonzero(pc.is_in(table["id"], value_set=repeated).to_numpy(zero_copy_only=False)):
        key = (_RANK.get(statuses[i], -1), finished[i] is not None, finished[i] or 0)
        j = best.get(ids[i])
        if j is None or key >= (_RANK.get(statuses[j], -1), finished[j] is not None, finished[j] or 0):
            best[ids[i]] = int(i)
    keep = pc.invert(pc.is_in(table["id"], value_set=repeated)).to_numpy(zero_copy_only=False)
    keep[list(best.values())] = True
    return table.filter(pa.array(keep))
