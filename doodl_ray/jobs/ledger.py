"""What an output already holds, read back from storage: the basis of resume and of `doodl-ray status`.

A shard is done when its marker exists and describes the same rows (ids hash) and the same spec
(result hash). For the other shards, the rows already computed are gathered from the shard file (left
by an earlier run, e.g. one with failures being retried) and from the per-batch parts; when an id has
several rows (a batch that finished twice around a crash), ok beats failed, then the latest wins."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.reader import InputPlan
from doodl_ray.jobs.storage import Storage
from doodl_ray.jobs.writer import STATUSES, ids_hash, read_manifest, read_rows, shard_key

_MARKER_SUFFIX = ".done.json"


@dataclass
class LedgerState:
    """Resume state: finished shards, and the rows already computed for the others."""

    complete: dict[int, dict[str, Any]] = field(default_factory=dict)  # shard -> its marker
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> final row (ok/failed) of open shards

    def done_ids(self, retry_failed: bool) -> set[str]:
        return {i for i, r in self.rows.items() if r["status"] == "ok" or (r["status"] == "failed" and not retry_failed)}


def read_markers(storage: Storage) -> dict[int, dict[str, Any]]:
    """The done markers of an output, by shard."""
    markers = {}
    for key in storage.list("results", _MARKER_SUFFIX):
        if "/parts/" not in key:
            marker = json.loads(storage.read_bytes(key))
            markers[int(marker["shard"])] = marker
    return markers


def _better(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    if old is None:
        return True
    rank = {"ok": 2, "failed": 1, "rejected": 0}
    return (rank[new["status"]], new["finished_at"] or 0) > (rank[old["status"]], old["finished_at"] or 0)


def load_ledger(storage: Storage, plan: InputPlan, spec_hash: str, retry_failed: bool = False) -> LedgerState:
    """Read markers, shard files and parts; raise InvalidInput if they belong to a different input."""
    state = LedgerState()
    changed = "the input changed since this output was written; use a new output URI or --force"
    for shard, marker in read_markers(storage).items():
        if shard not in plan.shard_ids or marker["ids_hash"] != ids_hash(plan.shard_ids[shard]):
            raise InvalidInput(f"shard {shard}: {changed}")
        if marker["spec_hash"] == spec_hash and not (retry_failed and marker.get("failed", 0)):
            state.complete[shard] = marker
    open_shards = set(plan.shard_ids) - set(state.complete)
    keys = [k for k in storage.list("results/parts", ".parquet") if _part_shard(k) in open_shards]
    keys += [shard_key(s) for s in sorted(open_shards) if storage.exists(shard_key(s))]
    for key in keys:
        for row in read_rows(storage, key):
            if row["status"] == "rejected" or row["spec_hash"] != spec_hash:
                continue  # rejections are re-derived from the input; other specs' rows do not count
            if row["id"] not in plan.shard_ids.get(row["shard"], ()):
                raise InvalidInput(f"{key}: {changed}")
            if _better(row, state.rows.get(row["id"])):
                state.rows[row["id"]] = row
    return state


def _part_shard(key: str) -> int:
    return int(key.split("/")[2].removeprefix("shard-"))


def ledger_counts(storage: Storage) -> dict[str, Any]:
    """Counts for `doodl-ray status`: from done markers, plus the parts of shards still open."""
    manifest = read_manifest(storage)
    if manifest is None:
        raise InvalidInput(f"{storage.uri} holds no run (no {storage.url('manifest.json')})")
    markers = read_markers(storage)
    counts: Counter[str] = Counter()
    for marker in markers.values():
        counts.update({s: marker.get(s, 0) for s in STATUSES})
    best: dict[str, dict[str, Any]] = {}
    for key in storage.list("results/parts", ".parquet"):
        if _part_shard(key) not in markers:
            for row in read_rows(storage, key):
                if _better(row, best.get(row["id"])):
                    best[row["id"]] = row
    counts.update(r["status"] for r in best.values())
    totals = manifest.get("totals", {})
    # rejected rows of open shards are written with their shard; the manifest knows how many there are
    counts["rejected"] += totals.get("rejected", 0) - sum(m.get("rejected", 0) for m in markers.values())
    total = totals.get("rows", 0)
    return {
        "run_id": manifest.get("run_id"), "state": manifest.get("state"), "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"), "rows": total, **{s: counts.get(s, 0) for s in STATUSES},
        "pending": max(0, total - sum(counts.get(s, 0) for s in STATUSES)),
        "shards_done": len(markers), "shards": totals.get("shards", 0),
    }
