"""Blind A/B votes in object storage: one small Parquet object per vote, written with one atomic write
(a rename on disk, one PUT on S3) under a fresh name, so any number of reviewers and servers can append
at once and none overwrites another; reading concatenates them.

    VOTES/votes/<UTC time>-<uuid>.parquet     one row with VOTE_SCHEMA (default VOTES: RUN/reviews)"""

from __future__ import annotations

import datetime as dt
import io
import threading
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from doodl_ray.config import validation_problems
from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.storage import Storage

VOTE_SCHEMA = pa.schema([
    ("vote_id", pa.string()),
    ("pair_id", pa.string()),  # the item id both runs share
    ("run_a", pa.string()),  # run ids (manifest run_id, or the URI where two runs share one)
    ("run_b", pa.string()),
    ("run_a_uri", pa.string()),
    ("run_b_uri", pa.string()),
    ("left", pa.string()),  # which run was shown on the left: a | b
    ("choice", pa.string()),  # left | right | tie | skip
    ("reviewer", pa.string()),
    ("question", pa.string()),
    ("target", pa.string()),  # the pair's target and prompt category, for per-group results
    ("category", pa.string()),
    ("voted_at", pa.timestamp("ms", tz="UTC")),
])


def reviewer_name(value: str) -> str:
    """A reviewer's name as given, stripped: 1-100 printable characters (InvalidInput otherwise)."""
    name = value.strip()
    if not 0 < len(name) <= 100 or any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidInput("a reviewer name is 1-100 printable characters")
    return name


class VoteRequest(BaseModel):
    """What a reviewer's page sends for one vote; everything else about the vote the server knows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewer: str
    pair_id: str = Field(min_length=1, max_length=4000)
    choice: Literal["left", "right", "tie", "skip"]

    @field_validator("reviewer")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        return reviewer_name(value)

    @classmethod
    def parse(cls, data: Any) -> "VoteRequest":
        if not isinstance(data, dict):
            raise InvalidInput("bad vote: expected a JSON object with reviewer, pair_id and choice")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(f"bad vote: {validation_problems(exc, 'vote')}") from None


def winner(vote: dict[str, Any]) -> str | None:
    """'a', 'b' or 'tie' for a vote; None for a skip."""
    choice, left = vote["choice"], vote["left"]
    if choice in ("tie", "skip"):
        return "tie" if choice == "tie" else None
    return left if choice == "left" else ("b" if left == "a" else "a")


class VoteStore:
    """Appends votes under a prefix and reads them back; each object is read once per process."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.storage = Storage(uri, storage_options)
        self.uri = self.storage.uri
        self._read: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def append(self, vote: dict[str, Any]) -> str:
        """Write one vote (a dict with VOTE_SCHEMA's fields) as its own object; returns its key."""
        stamp = vote["voted_at"].strftime("%Y%m%dT%H%M%S%fZ")
        key = f"votes/{stamp}-{vote['vote_id']}.parquet"
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([vote], schema=VOTE_SCHEMA), buffer)
        self.storage.write_bytes(key, buffer.getvalue())
        with self._lock:
            self._read[key] = [vote]
        return key

    def votes(self) -> list[dict[str, Any]]:
        """Every vote stored so far (other writers' included), oldest first."""
        keys = self.storage.list("votes", ".parquet")
        with self._lock:
            new = [k for k in keys if k not in self._read]
        with ThreadPoolExecutor(max_workers=8) as pool:
            tables = list(pool.map(self._read_vote, new))
        with self._lock:
            for key, table in zip(new, tables):
                self._read[key] = table.to_pylist()
            rows = [row for key in sorted(self._read) for row in self._read[key]]
        return rows


    def _read_vote(self, key: str) -> pa.Table:
        try:
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            # the key was just listed and votes are never deleted: a listing cache that a concurrent,
            # older listing overwrote (s3fs shares one per filesystem). Read past it once.
            self.storage.fs.invalidate_cache()
            data = self.storage.read_bytes(key)
        return pq.read_table(io.BytesIO(data))


def new_vote(**fields: Any) -> dict[str, Any]:
    """A vote row with a fresh id and the current time."""
    return {"vote_id": uuid.uuid4().hex, "voted_at": dt.datetime.now(dt.timezone.utc), **fields}
