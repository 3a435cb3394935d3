"""The ledger: a run's output in one object. It owns the layout, reading (one merge rule) and writing;
the images' own layout in each output format is the format's (jobs.formats).

    OUTPUT/manifest.json                                      spec, versions, start/end, totals
    OUTPUT/results/parts/shard-NNNNN/<lease>-<token>.parquet  results of one batch, as soon as it finishes
    OUTPUT/results/shard-NNNNN.parquet                        a finished shard's rows (one per input row)
    OUTPUT/results/shard-NNNNN.done.json                      the shard's done marker and stats (written last)
    OUTPUT/staging/shard-NNNNN/<lease>/<key>.<kind>.png       the images of a shard still open
    OUTPUT/rungs/shard-NNNNN/<token>.parquet                  an escalation ladder's rung results not yet final
    OUTPUT/rungs/shard-NNNNN/<key>.rung-R.<kind>.png          their images (jobs.escalation promotes the best one)

Parts make finished work durable the moment a worker has it, so a driver killed at any point loses at most
the batches in flight. Images are staged as each item finishes and put in their format's place (packed, or
moved to their own key) when their shard is finished; the marker is written only after that and the shard
file, so a marker always means a complete shard, and a driver killed in between does it again.

Fencing: a worker stages under the lease of the attempt the driver sent its batch with, and each row records
where its images are, so an abandoned attempt (a frozen node's actor that wakes up, an actor a lost driver
left running) never overwrites another attempt's image, and the image a shard keeps is always the one its
row describes. Its late part of a shard still open is ignored by the driver that gave it up and removed
with the shard's parts; a finished shard's marker refuses its writes (checked before them, and after its
part, which it then removes itself with its images); what it leaves when it dies in between is a stray,
which `strays` lists (`doodl-ray status`) and the next run's `tidy` removes.

A shard is done when its marker exists and describes the same rows (ids hash) and the same spec (result
hash). Rows are read with one merge rule: an id with several rows (a batch that finished twice around a
crash, a failure being retried) keeps its best: ok beats unaccepted beats failed beats rejected, then the latest.
A ladder's rung result that no rung has accepted yet is not a row of the results: it waits under rungs/ until the
item is final (accepted by a later rung, or unaccepted with its best image), and its shard's files go when the
shard is finished."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from doodl_ray.errors import DoodlError, InvalidInput
from doodl_ray.jobs.formats import (
    FORMATS,
    KINDS,
    ImageLookup,
    Images,
    Matched,
    OutputFormat,
    Samples,
    output_format,
    read_loose,
)
from doodl_ray.jobs.reader import InputPlan
from doodl_ray.jobs.rows import STATUSES, WITH_IMAGES, as_kept, now, to_parquet, typed
from doodl_ray.jobs.storage import Storage, check_key

MANIFEST = "manifest.json"
_RANK = {"ok": 3, "unaccepted": 2, "failed": 1, "rejected": 0}
_IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp")


def shard_key(shard: int) -> str:
    return f"results/shard-{shard:05d}.parquet"


def marker_key(shard: int) -> str:
    return f"results/shard-{shard:05d}.done.json"


def parts_prefix(shard: int) -> str:
    return f"results/parts/shard-{shard:05d}"


def staging_prefix(shard: int) -> str:
    return f"staging/shard-{shard:05d}"


def rungs_prefix(shard: int) -> str:
    return f"rungs/shard-{shard:05d}"


def _shard_of(key: str) -> int:
    """The shard a part or a staged image belongs to (its first shard-NNNNN path segment)."""
    return int(next(p for p in key.split("/") if p.startswith("shard-")).removeprefix("shard-"))


class ShardFinished(Exception):
    """A write for a shard whose marker exists: an abandoned attempt's, refused."""


def ids_hash(ids: Iterable[str | None]) -> str:
    """Fingerprint of a shard's composition: a marker only counts for the same rows. Ids are joined by
    newlines, with backslashes and newlines in them escaped (ids without either hash as they always did)."""
    text = "\n".join(str(i).replace("\\", "\\\\").replace("\n", "\\n") for i in ids)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_format(manifest: dict[str, Any]) -> str:
    """The output format a run was written in (runs from before formats existed wrote files)."""
    return manifest.get("spec", {}).get("output", {}).get("format", "files")


def best_per_id(table: pa.Table) -> pa.Table:
    """One row per id, the merge rule: ok beats unaccepted beats failed beats rejected, then the latest (later rows
    win ties)."""
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


@dataclass
class LedgerState:
    """Resume state: finished shards, and the rows already computed for the others."""

    complete: dict[int, dict[str, Any]] = field(default_factory=dict)  # shard -> its marker
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> final row (not rejected) of open shards

    def done_ids(self, retry_failed: bool) -> set[str]:
        return {i for i, r in self.rows.items()
                if r["status"] in WITH_IMAGES or (r["status"] == "failed" and not retry_failed)}


class Ledger:
    """A run's output prefix: its manifest, results, markers, staged images and, through its output format
    (`format_name`, else the one its manifest records), its images."""

    def __init__(self, storage: Storage, format_name: Optional[str] = None):
        self.storage = storage
        self._format_name = format_name
        self._lookups: dict[int, ImageLookup] = {}

    @functools.cached_property
    def format(self) -> OutputFormat:
        return output_format(self._format_name or manifest_format(self.manifest() or {}))

    # ---- manifest ------------------------------------------------------------------------------------

    def manifest(self) -> Optional[dict[str, Any]]:
        """The run manifest, or None when the output holds no run yet."""
        try:
            return json.loads(self.storage.read_bytes(MANIFEST))
        except FileNotFoundError:
            return None

    def run_manifest(self) -> dict[str, Any]:
        """The manifest of the run this output must hold; InvalidInput when it holds none."""
        manifest = self.manifest()
        if manifest is None:
            raise InvalidInput(f"{self.storage.uri} holds no run (no {self.storage.url(MANIFEST)})")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.storage.write_bytes(MANIFEST, json.dumps(manifest, indent=2, default=str).encode())

    # ---- reading -------------------------------------------------------------------------------------

    def markers(self) -> dict[int, dict[str, Any]]:
        """The done markers, by shard."""
        markers = {}
        for key in self.storage.list("results", ".done.json"):
            if "/parts/" not in key:
                marker = json.loads(self.storage.read_bytes(key))
                markers[int(marker["shard"])] = marker
        return markers

    def finished_shards(self) -> set[int]:
        """The shards with a done marker (named by the marker's file)."""
        return {int(posixpath.basename(k).removeprefix("shard-").removesuffix(".done.json"))
                for k in self.storage.list("results", ".done.json") if "/parts/" not in k}

    def read_table(self, key: str, columns: Optional[Iterable[str]] = None) -> pa.Table:
        """A results file's rows (only `columns` that it has, when given), typed as this release writes them:
        runs from before storage keys existed named an item's files by its id, and earlier releases kept
        scores, terms, compute and provenance as JSON text."""
        file = pq.ParquetFile(io.BytesIO(self.storage.read_bytes(key)))
        names = file.schema_arrow.names
        table = file.read(columns=None if columns is None else [c for c in columns if c in names])
        if "key" not in names and (columns is None or "key" in columns):
            table = table.append_column("key", table["id"])
        return typed(table)

    def read_rows(self, key: str) -> list[dict[str, Any]]:
        return self.read_table(key).to_pylist(maps_as_pydicts="strict")

    def _merged(self, keys: list[str], columns: Optional[Iterable[str]] = None) -> Optional[pa.Table]:
        """The rows of these results files, one per id by the merge rule; None when there are none."""
        tables = [self.read_table(k, columns) for k in keys]
        return best_per_id(pa.concat_tables(tables, promote_options="default")) if tables else None

    def _open_parts(self, finished: Iterable[int]) -> list[str]:
        done = set(finished)
        return [k for k in self.storage.list("results/parts", ".parquet") if _shard_of(k) not in done]

    def resume(self, plan: InputPlan, spec_hash: str, retry_failed: bool = False) -> LedgerState:
        """What a run of this plan and spec finds done here; InvalidInput if it belongs to another input."""
        state = LedgerState()
        changed = "the input changed since this output was written; use a new output URI or --force"
        for shard, marker in self.markers().items():
            if shard not in plan.shard_ids or marker["ids_hash"] != ids_hash(plan.shard_ids[shard]):
                raise InvalidInput(f"shard {shard}: {changed}")
            if marker["spec_hash"] == spec_hash and not (retry_failed and marker.get("failed", 0)):
                state.complete[shard] = marker
        open_shards = set(plan.shard_ids) - set(state.complete)
        keys = [k for k in self._open_parts(state.complete) if _shard_of(k) in open_shards]
        keys += [shard_key(s) for s in sorted(open_shards) if self.storage.exists(shard_key(s))]
        tables = []
        for key in keys:
            table = self.read_table(key)
            # rejections are re-derived from the input; other specs' rows do not count
            table = table.filter(pc.and_(pc.not_equal(table["status"], "rejected"),
                                         pc.equal(table["spec_hash"], spec_hash)))
            if any(i not in plan.shard_ids.get(s, ()) for i, s in zip(table["id"].to_pylist(),
                                                                        table["shard"].to_pylist())):
                raise InvalidInput(f"{key}: {changed}")
            tables.append(table)
        if tables:
            merged = best_per_id(pa.concat_tables(tables, promote_options="default"))
            state.rows = {r["id"]: r for r in merged.to_pylist(maps_as_pydicts="strict")}
        return state

    def counts(self) -> dict[str, Any]:
        """Counts for `doodl-ray status`: from done markers, plus the parts of shards still open."""
        manifest = self.run_manifest()
        markers = self.markers()
        counts: Counter[str] = Counter()
        for marker in markers.values():
            counts.update({s: marker.get(s, 0) for s in STATUSES})
        merged = self._merged(self._open_parts(markers), ("id", "status", "finished_at"))
        if merged is not None:
            counts.update(merged["status"].to_pylist())
        totals = manifest.get("totals", {})
        # rejected rows of open shards are written with their shard; the manifest knows how many there are
        counts["rejected"] += totals.get("rejected", 0) - sum(m.get("rejected", 0) for m in markers.values())
        total = totals.get("rows", 0)
        return {
            "run_id": manifest.get("run_id"), "state": manifest.get("state"), "started_at": manifest.get("started_at"),
            "finished_at": manifest.get("finished_at"), "rows": total, **{s: counts.get(s, 0) for s in STATUSES},
            "pending": max(0, total - sum(counts.get(s, 0) for s in STATUSES)),
            "shards_done": len(markers), "shards": totals.get("shards", 0), "strays": len(self.strays(markers)),
        }

    def strays(self, finished: Iterable[int] | None = None) -> list[str]:
        """Parts, staged images and rung results of finished shards: writes of abandoned attempts that died
        before removing them (see Fencing above); the next run's `tidy` removes them."""
        done = set(self.finished_shards() if finished is None else finished)
        return [k for prefix in ("results/parts", "staging", "rungs") for k in self.storage.list(prefix)
                if _shard_of(k) in done]

    def table(self, columns: Optional[Iterable[str]] = None) -> Optional[pa.Table]:
        """Every row recorded so far, one per id: finished shards' files and the parts of open shards (a
        finished shard's parts are already merged into its file, and normally deleted); None when none."""
        finished = self.finished_shards()
        keys = [k for k in self.storage.list("results", ".parquet")
                if "/parts/" not in k or _shard_of(k) not in finished]
        return self._merged(keys, columns)

    def finished_rows(self) -> list[dict[str, Any]]:
        """The rows of the finished shards' files."""
        return [r for key in self.storage.list("results", ".parquet") if "/parts/" not in key
                for r in self.read_rows(key)]

    def images(self, rows: list[dict[str, Any]]) -> dict[str, Images]:
        """The images of these rows (ok, unaccepted) of finished shards, by key, read shard by shard in the run's
        format."""
        found: dict[str, Images] = {}
        for shard in sorted({r["shard"] for r in rows}):
            shard_rows = [r for r in rows if r["shard"] == shard]
            wanted = {r["key"] for r in shard_rows}
            found.update((key, images) for key, images in self.format.samples(self.storage, shard, shard_rows)
                         if key in wanted)
        return found

    def holds_image(self, row: dict[str, Any], kind: str, finished: set[int]) -> bool:
        """Whether the run keeps an image of `kind` for this row, from the row alone (nothing is read): in
        place, the row records one under the run's own images; packed, the row has images (ok, unaccepted) in a
        finished shard."""
        if self.format.in_place:
            return self._recorded_key(row.get(f"{kind}_uri")) is not None
        return row.get("status") in WITH_IMAGES and row.get("shard") in finished

    def image(self, row: dict[str, Any], kind: str, finished: set[int]) -> Optional[bytes]:
        """An image of a row, or None. In place, only through the URI the row records, and only when it names
        a key under the run's own images (so nothing a reviewer sends ever becomes a path); packed, by the row's
        key from its shard's container."""
        if not self.holds_image(row, kind, finished):
            return None
        if self.format.in_place:
            try:
                return self.storage.read_bytes(self._recorded_key(row.get(f"{kind}_uri")))  # type: ignore[arg-type]
            except FileNotFoundError:
                return None
        shard = int(row["shard"])
        if shard not in self._lookups:
            self._lookups[shard] = self.format.lookup(self.storage, shard)
        return self._lookups[shard](row["key"], kind)

    @functools.cached_property
    def _prefixes(self) -> tuple[str, ...]:
        """What a recorded image URI may start with: where the run was written, and where it is now."""
        recorded = str(((self.manifest() or {}).get("spec") or {}).get("output", {}).get("uri") or "").rstrip("/")
        return tuple(f"{p}/" for p in {recorded, self.storage.uri} if p)

    def _recorded_key(self, uri: Optional[str]) -> Optional[str]:
        """The storage key of a recorded image URI, or None unless it is an image under the format's prefixes."""
        for prefix in self._prefixes if uri else ():
            if uri.startswith(prefix):  # type: ignore[union-attr]
                key = uri[len(prefix):]  # type: ignore[index]
                try:
                    check_key(key)
                except InvalidInput:
                    return None
                inside = key.split("/")[0] in self.format.prefixes
                return key if inside and posixpath.splitext(key)[1].lower() in _IMAGE_TYPES else None
        return None

    # ---- writing -------------------------------------------------------------------------------------

    def stage_key(self, shard: int, lease: str, key: str, kind: str) -> str:
        """Where the attempt `lease` stages an item's image while its shard is open, in every format."""
        return f"{staging_prefix(shard)}/{lease}/{key}.{KINDS[kind]}"

    def finished(self, shard: int) -> bool:
        """Whether the shard's marker exists: a worker then writes nothing more for it. (One GET: an object
        store's `exists` also lists the key as a folder when it is missing.)"""
        try:
            self.storage.read_bytes(marker_key(shard))
        except FileNotFoundError:
            return False
        return True

    def write_image(self, shard: int, lease: str, key: str, kind: str, png: bytes) -> str:
        """Stage one image of a finished item (worker side); returns its URI, which its row records."""
        return self.storage.write_bytes(self.stage_key(shard, lease, key, kind), png)

    def write_part(self, shard: int, token: str, rows: list[dict[str, Any]]) -> None:
        """Persist one batch's finished rows for a shard (worker side; `token` starts with the batch's lease),
        then check the shard's marker again: when the shard was finished meanwhile, remove the part and the
        images its rows staged and raise ShardFinished. The driver writes the marker before it removes the
        shard's parts and staging, so either it saw them, or this check sees its marker."""
        key = f"{parts_prefix(shard)}/{token}.parquet"
        self.storage.write_bytes(key, to_parquet(rows))
        if self.finished(shard):
            staged = [k for row in rows for kind in KINDS if (k := self._staged_key(shard, row, kind))]
            self.storage.delete([key, *staged])
            raise ShardFinished(f"shard {shard} was finished without this attempt ({token})")

    def reopen(self, shards: Iterable[int]) -> None:
        """Remove the markers of finished shards that a run computes again (`--retry-failed`): a marker
        refuses every write for its shard (Fencing). Their shard files keep their rows until they are
        finished again, so a driver killed meanwhile resumes from them."""
        self.storage.delete([marker_key(s) for s in sorted(set(shards) & self.finished_shards())])

    def finalize_shard(self, shard: int, rows: list[dict[str, Any]], shard_ids_hash: str, spec_hash: str,
                       samples: Optional[Samples] = None) -> dict[str, Any]:
        """Pack the shard's images (from `samples`, or what the workers wrote), write its results, then its
        done marker, then drop its parts and staging. Returns the marker. Every format sees the rows as the
        ledger keeps them (through the result schema), so a sample's JSON and the ledger's row agree."""
        rows = self._pack(shard, as_kept(rows), samples)
        self.storage.write_bytes(shard_key(shard), to_parquet(rows))
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        marker = {"shard": shard, "rows": len(rows), **counts, "ids_hash": shard_ids_hash, "spec_hash": spec_hash,
                  "format": self.format.name, "finished_at": now().isoformat()}
        self.storage.write_bytes(marker_key(shard), json.dumps(marker).encode())
        self.storage.delete_prefix(parts_prefix(shard))
        self.storage.delete_prefix(rungs_prefix(shard))
        self.storage.delete_prefix(staging_prefix(shard))
        return marker

    def _pack(self, shard: int, rows: list[dict[str, Any]], samples: Optional[Samples]) -> list[dict[str, Any]]:
        if samples is None and self.format.in_place:
            return self._place(shard, rows)
        ok = [r for r in rows if r["status"] in WITH_IMAGES]
        source = self._staged(shard, ok) if samples is None else samples
        return self.format.write(self.storage, shard, rows, _matched(ok, source,
                                                                     self.storage.url(self.format.location(shard))))

    def _staged_key(self, shard: int, row: dict[str, Any], kind: str) -> Optional[str]:
        """Where the row's image of `kind` is staged, from the URI the row records; None when it is not."""
        uri = row.get(f"{kind}_uri") or ""
        at = uri.rfind(f"/{staging_prefix(shard)}/")
        return uri[at + 1:] if at >= 0 else None

    def _place(self, shard: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Move each ok row's staged images to their own keys (an in-place format); rows already there (kept
        from an earlier finish of the shard) stay as they are."""
        moves: dict[str, str] = {}
        placed = []
        for row in rows:
            row = dict(row)
            for kind in KINDS:
                staged = self._staged_key(shard, row, kind) if row["status"] in WITH_IMAGES else None
                if staged is not None:
                    moves[staged] = self.format.final_key(row["key"], kind)
                    row[f"{kind}_uri"] = self.storage.url(moves[staged])
            placed.append(row)
        self.storage.move_many(moves)
        return placed

    def _staged(self, shard: int, ok: list[dict[str, Any]]) -> Samples:
        """The staged images of the ok rows (where runs before leases staged them when a row records none);
        rows kept from an earlier packing of this shard (a rerun with --retry-failed) take theirs from the
        existing container, read once, in order, only if some row needs it."""
        where = {(r["key"], kind): self._staged_key(shard, r, kind) or f"{staging_prefix(shard)}/{r['key']}.{suffix}"
                 for r in ok for kind, suffix in KINDS.items()}
        packed: Optional[Samples] = None
        for key, images in read_loose(self.storage, ok, lambda k, kind: where[k, kind]):
            if "image" not in images:
                if packed is None:
                    exists = self.storage.exists(self.format.location(shard))
                    packed = self.format.samples(self.storage, shard, []) if exists else iter(())
                images = next((found for k, found in packed if k == key), {})
            yield key, images

    # ---- a ladder's rung results, until their item is final (jobs.escalation) ------------------------------

    def rung_image_key(self, shard: int, key: str, rung: int, kind: str) -> str:
        return f"{rungs_prefix(shard)}/{key}.rung-{rung}.{KINDS[kind]}"

    def write_rung_image(self, shard: int, key: str, rung: int, kind: str, png: bytes) -> str:
        """Keep one image of a rung result that was not accepted (worker side); returns its URI."""
        return self.storage.write_bytes(self.rung_image_key(shard, key, rung, kind), png)

    def write_rungs(self, shard: int, token: str, rows: list[dict[str, Any]]) -> None:
        """Persist one batch's rung results that were not accepted, for a shard (worker side)."""
        self.storage.write_bytes(f"{rungs_prefix(shard)}/{token}.parquet", to_parquet(rows))

    def rungs(self, shards: Iterable[int], spec_hash: str) -> list[dict[str, Any]]:
        """The rung results kept for these shards by this spec, oldest first (a rung that finished twice
        around a crash appears twice; the caller keeps one per item and rung)."""
        rows: list[dict[str, Any]] = []
        for shard in shards:
            for key in self.storage.list(rungs_prefix(shard), ".parquet"):
                rows += [r for r in self.read_rows(key) if r["spec_hash"] == spec_hash]
        return sorted(rows, key=lambda r: r["finished_at"])

    def promote_rungs(self, rows: list[dict[str, Any]]) -> list[dict[str, Optional[str]]]:
        """Copy each rung result's images to where its item's final images go; their URIs by row column, per row."""
        wanted = {(i, kind): self.rung_image_key(r["shard"], r["key"], r["rung"], kind)
                  for i, r in enumerate(rows) for kind in KINDS if r.get(f"{kind}_uri")}
        found = self.storage.read_many(sorted(set(wanted.values())))
        missing = sorted(set(wanted.values()) - set(found))
        if missing:  # a rung result is written after its images, so this is damage, not a crash
            raise DoodlError(f"{self.storage.url(missing[0])}: a kept rung result's image is missing")
        targets = {(i, kind): self.stage_key(rows[i]["shard"], "escalation", rows[i]["key"], kind)
                   for i, kind in wanted}
        uris = self.storage.write_many({targets[w]: found[key] for w, key in wanted.items()})
        return [{f"{kind}_uri": uris.get(targets[(i, kind)]) if (i, kind) in targets else None for kind in KINDS}
                for i in range(len(rows))]

    def tidy(self) -> None:
        """Drop what a run with every shard finished no longer needs: strays of abandoned attempts."""
        self.storage.delete_prefix("staging")
        self.storage.delete_prefix("rungs")
        self.storage.delete_prefix("results/parts")

    def clear(self) -> None:
        """Remove every result and image (`run --force`), in whichever format an earlier run wrote them."""
        for prefix in ("results", "staging", "rungs", *sorted({p for f in FORMATS.values() for p in f.prefixes})):
            self.storage.delete_prefix(prefix)


def _matched(rows: list[dict[str, Any]], samples: Samples, where: str) -> Matched:
    """The ok rows with their images, one sample consumed per row (so a shard's images never sit in memory
    all at once); a sample out of step or without its main image means the run's images are incomplete."""
    for row in rows:
        key, images = next(samples, (None, {}))
        if key != row["key"] or "image" not in images:
            raise DoodlError(f"{where}: no image for {row['id']!r} (key {row['key']!r}; found {key!r})")
        yield row, images
