"""Date partitions: one job per day from a spec whose input URI holds a `{date}` template.

A partition is expressed as `--set` overrides of the spec file (run id, input URI, output URI), so the
very same spec is rebuilt wherever it is loaded: here for a local run, and on the cluster for a
submitted one. Its output goes to the rendered output template, or, when the output URI has none, to a
`date=YYYY-MM-DD` folder under it, so partitions never share a ledger. A partition is complete when its
output holds a finished run of the same spec with every shard marked done; that is read from the ledger,
not from Ray's job records, which a restarted head no longer has."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.ledger import Ledger
from doodl_ray.jobs.spec import JobSpec, load_spec
from doodl_ray.jobs.storage import Storage

DATE_TEMPLATE = re.compile(r"\{date(:[^{}]*)?\}")
"""`{date}` (ISO, 2026-11-01) or `{date:FORMAT}` with strftime codes, e.g. `{date:%Y/%m/%d}`."""


@dataclass(frozen=True)
class Partition:
    """One day's job: its spec, and the overrides (the caller's plus the partition's) that rebuild it."""

    day: dt.date
    overrides: list[str]
    spec: JobSpec


def parse_day(text: str) -> dt.date:
    """An ISO date (YYYY-MM-DD), or InvalidInput."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a date (expected YYYY-MM-DD)") from None


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from start to end, both included."""
    if end < start:
        raise InvalidInput(f"--to {end} is before --from {start}")
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def render(template: str, day: dt.date) -> str:
    """The template with its `{date}` fields filled in; other braces are an error, not left as they are."""
    try:
        return template.format_map({"date": day})
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise InvalidInput(f"{template!r}: bad template ({exc}); only {{date}} or {{date:FORMAT}} is filled in") \
            from None


def partition_overrides(spec: JobSpec, day: dt.date) -> list[str]:
    """The `--set` overrides that turn the template spec into the spec of one day."""
    if not DATE_TEMPLATE.search(spec.input.uri):
        raise InvalidInput(f"input.uri {spec.input.uri!r} has no {{date}} template: every day would read the same rows")
    output = spec.output.uri
    output = render(output, day) if DATE_TEMPLATE.search(output) else f"{output.rstrip('/')}/date={day.isoformat()}"
    values = {"run_id": f"{spec.run_id}-{day.isoformat()}", "input.uri": render(spec.input.uri, day),
              "output.uri": output}
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]  # JSON strings are YAML strings


def partition(spec_path: str | Path, overrides: list[str], day: dt.date) -> Partition:
    """One day of a template spec file, loaded exactly as the cluster will load it."""
    template = load_spec(spec_path, overrides)
    extra = overrides + partition_overrides(template, day)
    return Partition(day, extra, load_spec(spec_path, extra))


def partitions(spec_path: str | Path, overrides: list[str], start: dt.date, end: dt.date) -> list[Partition]:
    """Every day from start to end (inclusive) of a template spec file."""
    return [partition(spec_path, overrides, day) for day in days(start, end)]


def is_complete(spec: JobSpec) -> bool:
    """True when the spec's output holds a finished run of this spec (same result hash), every shard done."""
    ledger = Ledger(Storage(spec.output.uri, spec.storage.fsspec_options(spec.output.uri), spec.retries))
    manifest = ledger.manifest()
    if manifest is None or manifest.get("spec_hash") != spec.result_hash():
        return False
    counts = ledger.counts()
    return counts["state"] == "finished" and counts["pending"] == 0 and counts["shards_done"] == counts["shards"]
