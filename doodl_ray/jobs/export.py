"""A finished run rewritten in another output format (`doodl-ray export`), with the same rows.

Each shard goes through the same finalization as in a run: its images packed from the source run's
own files, its ledger shard file, then its marker. So the destination is a run like any other (`status`,
`sheet` and a resume with the converted spec all read it), and an interrupted export resumes: a shard
whose marker is already at the destination is skipped."""

from __future__ import annotations

from typing import Any

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.formats import output_format
from doodl_ray.jobs.ledger import Ledger, manifest_format, shard_key
from doodl_ray.jobs.rows import now
from doodl_ray.jobs.storage import Storage


def _converted(manifest: dict[str, Any], source: Ledger, dest: Ledger, format_name: str, state: str) -> dict:
    """The source's manifest as the destination's: the same run, in another place and format."""
    spec = manifest.get("spec", {})
    output = {**spec.get("output", {}), "uri": dest.storage.uri, "format": format_name}
    return {**manifest, "state": state, "spec": {**spec, "output": output}, "exported_from": source.storage.uri}


def export_run(source_storage: Storage, dest_storage: Storage, format_name: str) -> dict[str, int]:
    """Write the finished run at `source_storage` to `dest_storage` in `format_name`; returns shard, row and ok
    counts."""
    output_format(format_name)  # an unknown format fails before anything is written
    source, dest = Ledger(source_storage), Ledger(dest_storage, format_name)
    manifest = source.run_manifest()
    markers = source.markers()
    shards = manifest.get("totals", {}).get("shards", 0)
    if manifest.get("state") != "finished" or len(markers) < shards:
        raise InvalidInput(f"{source.storage.uri}: run {manifest.get('run_id')!r} is not finished ({len(markers)} of "
                           f"{shards} shards done); finish it with `doodl-ray run` first")
    existing = dest.manifest()
    if existing is not None and (existing.get("spec_hash") != manifest.get("spec_hash")
                                 or manifest_format(existing) != format_name):
        raise InvalidInput(f"{dest.storage.uri} already holds another run; export to a new URI")
    dest.write_manifest(_converted(manifest, source, dest, format_name, "exporting"))
    done = dest.markers()
    counts = {"shards": len(markers), "rows": 0, "ok": 0}
    for shard, marker in sorted(markers.items()):
        counts["rows"] += marker["rows"]
        counts["ok"] += marker.get("ok", 0)
        if done.get(shard, {}).get("ids_hash") == marker["ids_hash"]:
            continue
        rows = source.read_rows(shard_key(shard))
        dest.finalize_shard(shard, rows, marker["ids_hash"], marker["spec_hash"],
                            source.format.samples(source.storage, shard, rows))
    finished = _converted(manifest, source, dest, format_name, "finished")
    dest.write_manifest({**finished, "exported_at": now().isoformat()})
    return counts
