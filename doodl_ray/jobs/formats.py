"""Output formats: where a finished shard's images end up.

    files       images/<key>.png, images/<key>.initial.png     loose PNGs, written in place by the workers
    webdataset  data/NNNNN.tar                                 <key>.png, <key>.initial.png, <key>.json (the
                                                               row), <key>.txt (the prompt, when there is one)
    parquet     data/NNNNN.parquet                             the row's fields plus `image` and `initial_image`
                                                               as {bytes, path} structs, declared as Hugging
                                                               Face datasets' Image feature in the file metadata

In every format, results/ (per-shard Parquet of every row and the done markers) is the ledger: status,
resume and error rows come from it alone. The packed formats hold a shard's ok rows, in row order. Their
workers stage each image under staging/shard-NNNNN/ exactly as the files format writes it, so a finished
item is durable at once; when the shard is finished, the driver streams the staged images into the
container through a local temporary file, which lands under its final name whole (Storage.open_atomic),
and only then writes the ledger's shard file and the marker and drops the staging. A driver killed
anywhere in between rebuilds the container from the same staged images on the next run."""

from __future__ import annotations

import abc
import datetime as dt
import io
import itertools
import json
import math
import tarfile
from typing import IO, Any, ClassVar, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from doodl_ray.errors import DoodlError
from doodl_ray.jobs.storage import Storage
from doodl_ray.jobs.writer import RESULT_SCHEMA, manifest_format, read_manifest

KINDS = {"image": "png", "initial_image": "initial.png"}
"""Image kinds -> file suffix; a row records kind K at column `K_uri` (null when it has none)."""

Images = dict[str, bytes]  # kind -> PNG bytes
Samples = Iterator[tuple[str, Images]]  # (key, images) of a shard's ok rows, in row order

_CHUNK = 64  # rows whose loose PNGs are read or written concurrently


def _ok(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok"]


class OutputFormat(abc.ABC):
    """Where workers put images, how a finished shard is packed, and how a finished shard is read back."""

    name: ClassVar[str]
    prefixes: ClassVar[tuple[str, ...]]  # what a run of this format writes besides results/ and the manifest

    @abc.abstractmethod
    def stage_key(self, shard: int, key: str, kind: str) -> str:
        """Where a worker writes an item's image of `kind`."""

    @abc.abstractmethod
    def pack(self, storage: Storage, shard: int, rows: list[dict[str, Any]], samples: Optional[Samples]) -> list[dict]:
        """Write the shard's images from `samples` (None: what the workers staged); returns the rows as the
        ledger keeps them (with their image columns saying where the images now are)."""

    @abc.abstractmethod
    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        """The images of a packed shard whose ledger rows are `rows`."""

    def cleanup(self, storage: Storage, shard: int) -> None:
        """Drop what only served to pack the shard (after its marker is written)."""

    def tidy(self, storage: Storage) -> None:
        """Drop what a run with every shard finished no longer needs (e.g. strays of killed workers)."""

    def read_staged(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        """The staged images of the ok rows, fetched a chunk at a time; an image missing from staging is
        yielded as an empty dict."""
        for chunk in _chunks(iter(_ok(rows)), _CHUNK):
            wanted = {(r["key"], kind): self.stage_key(shard, r["key"], kind) for r in chunk for kind in KINDS}
            found = storage.read_many(list(wanted.values()))
            for row in chunk:
                yield row["key"], {kind: found[wanted[row["key"], kind]] for kind in KINDS
                                   if wanted[row["key"], kind] in found}


class FilesFormat(OutputFormat):
    """Today's layout: a PNG per image under images/, named by the item's key."""

    name = "files"
    prefixes = ("images",)

    def stage_key(self, shard: int, key: str, kind: str) -> str:
        return f"images/{key}.{KINDS[kind]}"

    def pack(self, storage: Storage, shard: int, rows: list[dict[str, Any]], samples: Optional[Samples]) -> list[dict]:
        if samples is None:
            return rows  # the workers wrote each image in place, and its URI into its row
        located: dict[str, dict[str, Optional[str]]] = {}
        for chunk in _chunks(_matched(_ok(rows), samples, storage.url("images")), _CHUNK):
            uris = storage.write_many({self.stage_key(shard, row["key"], kind): images[kind]
                                       for row, images in chunk for kind in images})
            for row, _ in chunk:
                keys = {kind: self.stage_key(shard, row["key"], kind) for kind in KINDS}
                located[row["key"]] = {f"{kind}_uri": uris.get(key) for kind, key in keys.items()}
        return [{**row, **located[row["key"]]} if row["status"] == "ok" else row for row in rows]

    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        return self.read_staged(storage, shard, rows)


class PackedFormat(OutputFormat):
    """One container per shard under data/, built from the staged PNGs when the shard is finished."""

    suffix: ClassVar[str]
    prefixes = ("data", "staging")

    def data_key(self, shard: int) -> str:
        return f"data/{shard:05d}.{self.suffix}"

    def stage_key(self, shard: int, key: str, kind: str) -> str:
        return f"staging/shard-{shard:05d}/{key}.{KINDS[kind]}"

    def pack(self, storage: Storage, shard: int, rows: list[dict[str, Any]], samples: Optional[Samples]) -> list[dict]:
        rows = [{**row, **{f"{kind}_uri": None for kind in KINDS}} for row in rows]  # the images are in the container
        source = self._staged_or_packed(storage, shard, rows) if samples is None else samples
        with storage.open_atomic(self.data_key(shard)) as f:
            self.write(f, _matched(_ok(rows), source, storage.url(self.data_key(shard))))
        return rows

    def _staged_or_packed(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        """Staged images; rows kept from an earlier packing of this shard (a rerun with --retry-failed) take
        theirs from the existing container, read once, in order, only if some row needs it."""
        packed: Optional[Samples] = None
        for key, images in self.read_staged(storage, shard, rows):
            if "image" not in images:
                if packed is None:
                    packed = self.samples(storage, shard, []) if storage.exists(self.data_key(shard)) else iter(())
                images = next((found for k, found in packed if k == key), {})
            yield key, images

    def cleanup(self, storage: Storage, shard: int) -> None:
        storage.delete_prefix(f"staging/shard-{shard:05d}")

    def tidy(self, storage: Storage) -> None:
        storage.delete_prefix("staging")

    @abc.abstractmethod
    def write(self, f: IO[bytes], samples: Iterator[tuple[dict[str, Any], Images]]) -> None:
        """Write the container of these (row, images) to an open file."""


class WebDatasetFormat(PackedFormat):
    """A tar per shard; a sample's members share its key (no dots, so webdataset splits names correctly)."""

    name = "webdataset"
    suffix = "tar"

    def write(self, f: IO[bytes], samples: Iterator[tuple[dict[str, Any], Images]]) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for row, images in samples:
                key = row["key"]
                members = {f"{key}.{KINDS[kind]}": images[kind] for kind in KINDS if kind in images}
                members[f"{key}.json"] = json.dumps(json_row(row), ensure_ascii=False).encode()
                if row["prompt"] is not None:
                    members[f"{key}.txt"] = row["prompt"].encode()
                mtime = int(row["finished_at"].timestamp()) if row["finished_at"] else 0
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), mtime, 0o644
                    tar.addfile(info, io.BytesIO(data))

    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        with storage.open(self.data_key(shard)) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            key, images = None, {}
            for member in tar:
                name, _, suffix = member.name.partition(".")
                kind = next((k for k, s in KINDS.items() if s == suffix), None)
                if kind is None:
                    continue
                if name != key and key is not None:
                    yield key, images
                    images = {}
                key, images[kind] = name, tar.extractfile(member).read()  # type: ignore[union-attr]
            if key is not None:
                yield key, images


IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The Arrow storage of Hugging Face datasets' Image feature."""

DATA_SCHEMA = pa.schema(
    list(RESULT_SCHEMA) + [pa.field(kind, IMAGE_STRUCT) for kind in KINDS],
    metadata={"huggingface": json.dumps({"info": {"features": {kind: {"_type": "Image"} for kind in KINDS}}})},
)
"""A packed Parquet shard: the ledger's columns plus the images; the metadata tells `datasets` to decode them
(columns it does not name keep the types Arrow gives them)."""


class ParquetFormat(PackedFormat):
    """A Parquet file per shard with the images embedded, loadable by `datasets.load_dataset("parquet")`."""

    name = "parquet"
    suffix = "parquet"
    rows_per_group = 64  # images make rows large; small row groups keep reading and writing in small steps

    def write(self, f: IO[bytes], samples: Iterator[tuple[dict[str, Any], Images]]) -> None:
        with pq.ParquetWriter(f, DATA_SCHEMA) as writer:
            for group in _chunks(samples, self.rows_per_group):
                rows = [{**row, **{kind: {"bytes": images[kind], "path": f"{row['key']}.{KINDS[kind]}"}
                                   if kind in images else None for kind in KINDS}} for row, images in group]
                writer.write_table(pa.Table.from_pylist(rows, schema=DATA_SCHEMA))

    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        with storage.open(self.data_key(shard)) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self.rows_per_group, columns=["key", *KINDS]):
                for row in batch.to_pylist():
                    yield row["key"], {kind: row[kind]["bytes"] for kind in KINDS if row[kind] is not None}


FORMATS: dict[str, OutputFormat] = {f.name: f for f in (FilesFormat(), WebDatasetFormat(), ParquetFormat())}
ALL_PREFIXES = sorted({p for f in FORMATS.values() for p in f.prefixes})


def output_format(name: str) -> OutputFormat:
    return FORMATS[name]


def read_images(storage: Storage, rows: list[dict[str, Any]]) -> dict[str, Images]:
    """The images of these ok rows of a run's finished shards, by key, in whatever format the run has:
    read shard by shard, keeping only the rows asked for."""
    fmt = output_format(manifest_format(read_manifest(storage) or {}))
    found: dict[str, Images] = {}
    for shard in sorted({r["shard"] for r in rows}):
        shard_rows = [r for r in rows if r["shard"] == shard]
        wanted = {r["key"] for r in shard_rows}
        found.update((key, images) for key, images in fmt.samples(storage, shard, shard_rows) if key in wanted)
    return found


def _matched(rows: list[dict[str, Any]], samples: Samples, where: str) -> Iterator[tuple[dict[str, Any], Images]]:
    """The ok rows with their images, one sample consumed per row (so a shard's images never sit in memory
    all at once); a sample out of step or without its main image means the run's images are incomplete."""
    for row in rows:
        key, images = next(samples, (None, {}))
        if key != row["key"] or "image" not in images:
            raise DoodlError(f"{where}: no image for {row['id']!r} (key {row['key']!r}; found {key!r})")
        yield row, images


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    return iter(lambda: list(itertools.islice(items, size)), [])


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
