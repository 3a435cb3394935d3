"""A finished run rewritten in another output format (`doodl-ray export`), with the same rows.

Each shard goes through the same finalization as in a run: its images packed from the source run's
own files, its ledger shard file, then its marker. So the destination is a run like any other (`status`,
`sheet` and a resume with the converted spec all read it), and an interrupted export resumes: a shard
whose marker is already at the destination is skipped."""

from __future__ import annotations

from typing import Any

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.formats import output_format
from doodl_ray.jobs.ledger import read_markers
from doodl_ray.jobs.storage import Storage
from doodl_ray.jobs.writer import (
    finalize_shard,
    manifest_format,
    now,
    read_manifest,
    read_rows,
    shard_key,
    write_manifest,
)


def _converted(manifest: dict[str, Any], source: Storage, dest: Storage, format_name: str, state: str) -> dict:
    """The source's manifest as the destination's: the same run, in another place and format."""
    spec = manifest.get("spec", {})
    output = {**spec.get("output", {}), "uri": dest.uri, "format": format_name}
    return {**manifest, "state": state, "spec": {**spec, "output": output}, "exported_from": source.uri}


def export_run(source: Storage, dest: Storage, format_name: str) -> dict[str, int]:
    """Write the finished run at `source` to `dest` in `format_name`; returns shard, row and ok counts."""
    manifest = read_manifest(source)
    if manifest is None:
        raise InvalidInput(f"{source.uri} holds no run (no {source.url('manifest.json')})")
    markers = read_markers(source)
    shards = manifest.get("totals", {}).get("shards", 0)
    if manifest.get("state") != "finished" or len(markers) < shards:
        raise InvalidInput(f"{source.uri}: run {manifest.get('run_id')!r} is not finished ({len(markers)} of "
                           f"{shards} shards done); finish it with `doodl-ray run` first")
    target = output_format(format_name)
    existing = read_manifest(dest)
    if existing is not None and (existing.get("spec_hash") != manifest.get("spec_hash")
                                 or manifest_format(existing) != format_name):
        raise InvalidInput(f"{dest.uri} already holds another run; export to a new URI")
    source_format = output_format(manifest_format(manifest))
    write_manifest(dest, _converted(manifest, source, dest, format_name, "exporting"))
    done = read_markers(dest)
    counts = {"shards": len(markers), "rows": 0, "ok": 0}
    for shard, marker in sorted(markers.items()):
        counts["rows"] += marker["rows"]
        counts["ok"] += marker.get("ok", 0)
        if done.get(shard, {}).get("ids_hash") == marker["ids_hash"]:
            continue
        rows = read_rows(source, shard_key(shard))
        finalize_shard(dest, target, shard, rows, marker["ids_hash"], marker["spec_hash"],
                       source_format.samples(source, shard, rows))
    finished = _converted(manifest, source, dest, format_name, "finished")
    write_manifest(dest, {**finished, "exported_at": now().isoformat()})
    return counts
