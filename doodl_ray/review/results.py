"""One run's results, read once into a pyarrow table for review: every row the ledger records, one per id
(jobs.ledger's merge rule), with each score of the `scores` map as a numeric column and the prompt category
joined from the run's input.

Images come through the ledger in whatever output format the run has: loose files only through the URIs
the rows recorded under the run's own images, packed ones by the row's key from its shard's container, so
nothing a reviewer sends (an id, a path) ever becomes a file path."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from doodl_ray.jobs.ledger import Ledger
from doodl_ray.jobs.storage import Storage

SCORE_PREFIX = "score:"
"""Column name prefix of a score taken out of the `scores` map (e.g. `score:eval/classifier`)."""
NUMERIC = ("initial_loss", "final_loss", "best_iteration", "seconds", "rung")
"""Result columns a reviewer can sort and filter by, besides the scores."""
_COLUMNS = ("id", "key", "shard", "status", "image_uri", "initial_image_uri", "prompt", "target", "class_label",
            "seed", "method", "initial_loss", "final_loss", "best_iteration", "history", "scores", "attempts",
            "error_type", "error", "seconds", "finished_at", "rung", "rung_evals")
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"RIFF", "image/webp"))


@dataclass(frozen=True)
class Image:
    """An image's bytes and media type."""

    data: bytes
    mimetype: str


class RunResults:
    """A run's output opened for review. `table` holds one row per item, in shard order."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, category_column: str = "category"):
        self.ledger = Ledger(Storage(uri, storage_options))
        self.storage = self.ledger.storage
        self.manifest = self.ledger.run_manifest()
        self.run_id = str(self.manifest.get("run_id") or uri)
        self.finished = self.ledger.finished_shards()
        table = self.ledger.table(_COLUMNS)
        if table is None:
            table = pa.table({c: pa.array([], pa.string()) for c in ("id", "status", "image_uri")})
        self.table = self._score_columns(table)
        spec = self.manifest.get("spec") or {}
        self.table = self._join_category(self.table, spec, storage_options or {}, category_column)
        self._row_of = {item_id: i for i, item_id in enumerate(self.table["id"].to_pylist())}

    # ---- reading -----------------------------------------------------------------------------------

    @staticmethod
    def _score_columns(table: pa.Table) -> pa.Table:
        """Each key of the `scores` map as a float column `score:<key>` (null where a row lacks it)."""
        if "scores" not in table.column_names:
            return table
        keys = [chunk.keys for chunk in table["scores"].chunks]
        names = sorted(pc.unique(pa.chunked_array(keys, pa.string())).to_pylist())
        for name in names:
            table = table.append_column(SCORE_PREFIX + name, pc.map_lookup(table["scores"], name, "first"))
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
        return None if index is None else self.table.slice(index, 1).to_pylist(maps_as_pydicts="strict")[0]

    def viewable(self, row: dict[str, Any], kind: str = "image") -> bool:
        """Whether the run keeps an image of `kind` for this row (judged from the row, nothing read)."""
        return self.ledger.holds_image(row, kind, self.finished)

    def image(self, item_id: str, kind: str = "image") -> Image | None:
        """An item's image of `kind` (image or initial_image), or None."""
        row = self.row(item_id)
        data = self.ledger.image(row, kind, self.finished) if row else None
        if data is None:
            return None
        return Image(data, next((mime for magic, mime in _MAGIC if data.startswith(magic)), "application/octet-stream"))

    def has_image(self, item_id: str, kind: str) -> bool:
        return self.image(item_id, kind) is not None
