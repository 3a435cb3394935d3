"""Output formats: how a finished shard's images are written, and how they are read back.

    files       images/<key>.png, images/<key>.initial.png     loose PNGs, moved there from staging
    webdataset  data/NNNNN.tar                                 <key>.png, <key>.initial.png, <key>.json (the
                                                               row), <key>.txt (the prompt, when there is one)
    parquet     data/NNNNN.parquet                             the row's fields plus `image` and `initial_image`
                                                               as {bytes, path} structs, declared as Hugging
                                                               Face datasets' Image feature in the file metadata

Each format is a writer with its readers (a shard's samples in row order; one image by key), the way every
img2dataset writer answers to one interface, and registers itself under its name (`register_format`); a
spec names a format of another package as `package.module:name`, which that module registers when imported.
Everything else (where workers stage images, when a shard is packed, the results files and markers) is the
ledger's (jobs.ledger). The packed formats hold a shard's rows with images (ok, unaccepted), in row order, in one
container that lands under its final name whole (Storage.open_atomic)."""

from __future__ import annotations

import abc
import io
import itertools
import json
import tarfile
from typing import IO, Any, Callable, ClassVar, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from doodl_ray.jobs.rows import RESULT_SCHEMA, WITH_IMAGES, json_row
from doodl_ray.jobs.storage import Storage
from doodl_ray.plugins import registered

KINDS = {"image": "png", "initial_image": "initial.png"}
"""Image kinds -> file suffix; a row records kind K at column `K_uri` (null when it has none)."""

Images = dict[str, bytes]  # kind -> PNG bytes
Samples = Iterator[tuple[str, Images]]  # (key, images) of a shard's ok rows, in row order
Matched = Iterator[tuple[dict[str, Any], Images]]  # the ok rows with their images, in row order
ImageLookup = Callable[[str, str], Optional[bytes]]  # (key, kind) -> the image of a finished shard, or None

CHUNK = 64  # rows whose loose PNGs are read or written concurrently


def chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    return iter(lambda: list(itertools.islice(items, size)), [])


def read_loose(storage: Storage, rows: list[dict[str, Any]], where: Callable[[str, str], str]) -> Samples:
    """The loose PNGs of these ok rows at `where(key, kind)`, fetched a chunk at a time; an image that is
    missing is left out of its sample."""
    for chunk in chunks(iter(rows), CHUNK):
        wanted = {(r["key"], kind): where(r["key"], kind) for r in chunk for kind in KINDS}
        found = storage.read_many(list(wanted.values()))
        for row in chunk:
            yield row["key"], {kind: found[wanted[row["key"], kind]] for kind in KINDS
                               if wanted[row["key"], kind] in found}


class OutputFormat(abc.ABC):
    """A writer of a finished shard's images and its readers."""

    name: ClassVar[str]
    prefixes: ClassVar[tuple[str, ...]]  # where its images live, besides results/ and the manifest
    in_place: ClassVar[bool] = False  # each image has a key of its own (final_key); else the shard's are packed

    def final_key(self, key: str, kind: str) -> str:
        """Where an in-place format keeps an item's image of `kind`."""
        raise NotImplementedError(f"the {self.name} format packs its images; they have no place of their own")

    @abc.abstractmethod
    def location(self, shard: int) -> str:
        """The key (or prefix) that holds a finished shard's images, for messages and existence checks."""

    @abc.abstractmethod
    def write(self, storage: Storage, shard: int, rows: list[dict[str, Any]], samples: Matched) -> list[dict]:
        """Write the shard's images from its ok rows' samples; returns the rows as the ledger keeps them
        (their image columns saying where the images now are)."""

    @abc.abstractmethod
    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        """The images of a finished shard whose ledger rows are `rows`, in row order."""

    def lookup(self, storage: Storage, shard: int) -> ImageLookup:
        """One image at a time from a finished shard (the review app): by default a scan of its samples."""
        def image(key: str, kind: str) -> Optional[bytes]:
            return next((images.get(kind) for k, images in self.samples(storage, shard, []) if k == key), None)

        return image


FORMATS: dict[str, OutputFormat] = {}


def register_format(cls: type[OutputFormat]) -> type[OutputFormat]:
    """Class decorator: the format is known by its `name` (in specs, manifests and `export --format`)."""
    FORMATS[cls.name] = cls()
    return cls


def output_format(name: str) -> OutputFormat:
    """The format a spec or manifest names: a registered name, or `package.module:name` (the module is imported,
    and registers it); InvalidInput for any other."""
    return registered(name, FORMATS, "output format")


@register_format
class FilesFormat(OutputFormat):
    """A PNG per image under images/, named by the item's key, moved there when its shard is finished."""

    name = "files"
    prefixes = ("images",)
    in_place = True

    def final_key(self, key: str, kind: str) -> str:
        return f"images/{key}.{KINDS[kind]}"

    def location(self, shard: int) -> str:
        return "images"

    def write(self, storage: Storage, shard: int, rows: list[dict[str, Any]], samples: Matched) -> list[dict]:
        located: dict[str, dict[str, Optional[str]]] = {}
        for chunk in chunks(samples, CHUNK):
            uris = storage.write_many({self.final_key(row["key"], kind): images[kind]
                                       for row, images in chunk for kind in images})
            for row, _ in chunk:
                located[row["key"]] = {f"{kind}_uri": uris.get(self.final_key(row["key"], kind)) for kind in KINDS}
        return [{**row, **located[row["key"]]} if row["status"] in WITH_IMAGES else row for row in rows]

    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        return read_loose(storage, [r for r in rows if r["status"] in WITH_IMAGES], self.final_key)


class PackedFormat(OutputFormat):
    """One container per shard under data/."""

    suffix: ClassVar[str]
    prefixes = ("data",)

    def location(self, shard: int) -> str:
        return f"data/{shard:05d}.{self.suffix}"

    def write(self, storage: Storage, shard: int, rows: list[dict[str, Any]], samples: Matched) -> list[dict]:
        with storage.open_atomic(self.location(shard)) as f:
            self.write_container(f, samples)
        return [{**row, **{f"{kind}_uri": None for kind in KINDS}} for row in rows]  # the images are in the container

    @abc.abstractmethod
    def write_container(self, f: IO[bytes], samples: Matched) -> None:
        """Write the container of these (row, images) to an open file."""


@register_format
class WebDatasetFormat(PackedFormat):
    """A tar per shard; a sample's members share its key (no dots, so webdataset splits names correctly)."""

    name = "webdataset"
    suffix = "tar"

    def write_container(self, f: IO[bytes], samples: Matched) -> None:
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
        with storage.open(self.location(shard)) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            key, images = None, {}
            for member in tar:
                name, kind = _member(member.name)
                if kind is None:
                    continue
                if name != key and key is not None:
                    yield key, images
                    images = {}
                key, images[kind] = name, tar.extractfile(member).read()  # type: ignore[union-attr]
            if key is not None:
                yield key, images

    def lookup(self, storage: Storage, shard: int) -> ImageLookup:
        """The tar's member headers read once (seeking past the data); each image is then one ranged read."""
        where = self.location(shard)
        with storage.open(where) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            spans = {_member(m.name): (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}

        def image(key: str, kind: str) -> Optional[bytes]:
            span = spans.get((key, kind))
            return None if span is None else storage.read_range(where, span[0], span[0] + span[1])

        return image


def _member(name: str) -> tuple[str, Optional[str]]:
    """A tar member's (key, image kind); kind None for the json and txt members."""
    key, _, suffix = name.partition(".")
    return key, next((k for k, s in KINDS.items() if s == suffix), None)


IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The Arrow storage of Hugging Face datasets' Image feature."""

ROW_SCHEMA = pa.schema(list(RESULT_SCHEMA) + [pa.field(kind, IMAGE_STRUCT) for kind in KINDS])
DATA_SCHEMA = pa.schema(
    [pa.field(f.name, pa.list_(pa.struct([("key", f.type.key_type), ("value", f.type.item_type)])))
     if pa.types.is_map(f.type) else f for f in ROW_SCHEMA],
    metadata={"huggingface": json.dumps({"info": {"features": {kind: {"_type": "Image"} for kind in KINDS}}})},
)
"""A packed Parquet shard: the ledger's columns plus the images; the metadata tells `datasets` to decode them
(columns it does not name keep the types Arrow gives them). `datasets` has no map feature, so each map column
(scores, terms, compute) is stored as its entries, a list of {key, value} structs, as Arrow lays a map out."""


@register_format
class ParquetFormat(PackedFormat):
    """A Parquet file per shard with the images embedded, loadable by `datasets.load_dataset("parquet")`."""

    name = "parquet"
    suffix = "parquet"
    rows_per_group = 64  # images make rows large; small row groups keep reading and writing in small steps

    def write_container(self, f: IO[bytes], samples: Matched) -> None:
        with pq.ParquetWriter(f, DATA_SCHEMA) as writer:
            for group in chunks(samples, self.rows_per_group):
                rows = [{**row, **{kind: {"bytes": images[kind], "path": f"{row['key']}.{KINDS[kind]}"}
                                   if kind in images else None for kind in KINDS}} for row, images in group]
                writer.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA).cast(DATA_SCHEMA))

    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        with storage.open(self.location(shard)) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self.rows_per_group, columns=["key", *KINDS]):
                for row in batch.to_pylist():
                    yield row["key"], {kind: row[kind]["bytes"] for kind in KINDS if row[kind] is not None}

    def lookup(self, storage: Storage, shard: int) -> ImageLookup:
        """The keys read once (row group and position of each); an image is then read from its row group."""
        where = self.location(shard)
        with storage.open(where) as f:
            file = pq.ParquetFile(f)
            places = {key: (group, i) for group in range(file.num_row_groups)
                      for i, key in enumerate(file.read_row_group(group, columns=["key"])["key"].to_pylist())}

        def image(key: str, kind: str) -> Optional[bytes]:
            place = places.get(key)
            if place is None:
                return None
            with storage.open(where) as f:
                found = pq.ParquetFile(f).read_row_group(place[0], columns=[kind])[kind][place[1]].as_py()
            return None if found is None else found["bytes"]

        return image

