"""A blind A/B study: two runs joined on item id, shown to each reviewer in an order and with sides of
their own, and the votes that come back.

Order and sides are a hash of (reviewer, pair), so a reviewer sees the same layout after a reload while
different reviewers see different ones; progress is read back from the vote store, so a study resumes
wherever it stopped and no reviewer is shown a pair twice. One server is the reviewer's source of truth
while it runs: it reads a reviewer's earlier votes once, then counts the votes it writes itself."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pyarrow.compute as pc

from doodl_ray.errors import InvalidInput
from doodl_ray.review.results import RunResults
from doodl_ray.review.votes import VoteRequest, VoteStore, new_vote

DEFAULT_QUESTION = "Which image better matches the prompt?"


class AlreadyVoted(InvalidInput):
    """A reviewer voted on this pair before (a double submit, or two pages open)."""


def _hash(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


class Study:
    """Pairs of `a` and `b` with an image in both, and the votes of every reviewer on them."""

    def __init__(self, a: RunResults, b: RunResults, votes: VoteStore, question: str = DEFAULT_QUESTION):
        if not question.strip():
            raise InvalidInput("the A/B question is empty")
        self.a, self.b, self.store, self.question = a, b, votes, question.strip()
        same_name = a.run_id == b.run_id
        self.names = (a.storage.uri if same_name else a.run_id, b.storage.uri if same_name else b.run_id)
        self.pairs = sorted(set(_viewable(a)) & set(_viewable(b)))
        if not self.pairs:
            raise InvalidInput(f"{a.storage.uri} and {b.storage.uri} share no item that is ok with an image in both")
        self._pair_set = set(self.pairs)
        self._voted: dict[str, set[str]] = {}  # reviewer -> pairs voted (stored, or being written now)
        self._lock = threading.Lock()

    def run(self, side: str) -> RunResults:
        return self.a if side == "a" else self.b

    def left(self, reviewer: str, pair_id: str) -> str:
        """Which run ('a' or 'b') this reviewer sees on the left for this pair."""
        return "a" if _hash("side", reviewer, pair_id)[0] & 1 == 0 else "b"

    def order(self, reviewer: str) -> list[str]:
        return sorted(self.pairs, key=lambda p: _hash("order", reviewer, p))

    def voted(self, reviewer: str) -> set[str]:
        """Pairs this reviewer has voted on in this study: read from the store the first time the reviewer
        appears (votes of earlier sessions), kept up to date in memory after that."""
        with self._lock:
            known = self._voted.get(reviewer)
            if known is not None:
                return set(known)
        stored = {v["pair_id"] for v in self.store.votes() if v["reviewer"] == reviewer and self._ours(v)}
        with self._lock:
            return set(self._voted.setdefault(reviewer, stored))

    def next_pair(self, reviewer: str) -> tuple[str | None, int]:
        """The reviewer's next unseen pair (None when done) and how many they have voted on."""
        done = self.voted(reviewer)
        return next((p for p in self.order(reviewer) if p not in done), None), len(done & self._pair_set)

    def vote(self, request: VoteRequest) -> dict[str, Any]:
        """Record one vote; InvalidInput for an unknown pair, AlreadyVoted for a repeat. Nothing is written
        for either. Returns the vote with the reviewer's count of pairs voted."""
        if request.pair_id not in self._pair_set:
            raise InvalidInput("bad vote: pair_id is not a pair of this study")
        self.voted(request.reviewer)  # loads the reviewer's earlier votes
        with self._lock:
            voted = self._voted[request.reviewer]
            if request.pair_id in voted:
                raise AlreadyVoted("this reviewer already voted on this pair")
            voted.add(request.pair_id)  # claimed: a concurrent repeat is refused while this one is written
        try:
            row = self.a.row(request.pair_id) or {}
            vote = new_vote(
                pair_id=request.pair_id, run_a=self.names[0], run_b=self.names[1], run_a_uri=self.a.storage.uri,
                run_b_uri=self.b.storage.uri, left=self.left(request.reviewer, request.pair_id), choice=request.choice,
                reviewer=request.reviewer, question=self.question, target=row.get("target"),
                category=row.get("category"),
            )
            self.store.append(vote)
        except BaseException:
            with self._lock:
                voted.discard(request.pair_id)
            raise
        return vote

    def _ours(self, vote: dict[str, Any]) -> bool:
        return (vote["run_a"], vote["run_b"], vote["question"]) == (*self.names, self.question)


def _viewable(run: RunResults) -> list[str]:
    """Ids of a run's ok rows whose image the run keeps."""
    table = run.table.filter(pc.equal(run.table["status"], "ok"))
    return [row["id"] for row in table.select([c for c in ("id", "key", "shard", "status", "image_uri")
                                                if c in table.column_names]).to_pylist() if run.viewable(row)]
