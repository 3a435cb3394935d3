"""The driver's side of an escalation ladder (jobs.ladder): which rung each item runs next, the dataset budget,
and the final rows of the items that no rung accepts.

Work goes in passes, one rung at a time: every item waiting for rung r runs before any item runs rung r + 1, so
every item gets its first rung before any gets its second. The budget is spent in that order: an item goes up a
rung only if the budget still holds that rung's cap after what is spent and what the items in flight may spend;
when it does not and nothing is in flight whose leftover could pay for it, the items still waiting end
`unaccepted` with their best image (so which items escalate depends only on what earlier items spent).

What survives a crash: each rung result is kept by its worker before the driver hears of it, an accepted one as
the item's final row, one that is not under the ledger's rungs/ with its images. A rerun reads them back: an item
continues at the rung after its last kept one (no finished rung runs twice), and the spend is what the kept
results spent. An unaccepted item's final row is its best kept result (most thresholds met, then the lowest
guide loss, then the later rung) with its images copied where the output format keeps final images, and the
totals of every rung it ran."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from doodl_ray.jobs.ladder import LadderConfig, rung_seed
from doodl_ray.jobs.ledger import Ledger, LedgerState, shard_key
from doodl_ray.jobs.reader import JobItem
from doodl_ray.jobs.rows import RowContext, failure_row, now

PASSED = "accept/passed"
"""The score that says how many acceptance thresholds a rung's result met."""
TOTALS = ("rung_evals", "compute", "seconds", "gpu_seconds")
"""Row columns that add up over the rungs an item ran."""

Final = tuple[JobItem, dict[str, Any]]


@dataclass(frozen=True)
class RungItem(JobItem):
    """An item on one rung of its ladder: `seed` is that rung's (jobs.ladder.rung_seed), `previous` the totals of
    the rungs it ran before (rung_evals, compute, seconds, gpu_seconds), which its rows carry on."""

    rung: int = 1
    previous: Optional[dict[str, Any]] = field(default=None, compare=False)


def _evals(row: dict[str, Any]) -> int:
    """UNet evaluations of a row's last rung."""
    return int((row.get("rung_evals") or [0])[-1])


class Escalation:
    """One driver session's ladder bookkeeping: `start` it with the pending items, then take `next_pass`es,
    `admit` each item before it is dispatched, and `settle` every outcome."""

    def __init__(self, ladder: LadderConfig, total: Optional[int], ledger: Ledger, context: RowContext):
        self.ladder, self.total, self.ledger, self.context = ladder, total, ledger, context
        self.spent = 0
        self.reserved: dict[str, int] = {}  # id -> the cap of the rung it is running
        self.kept: dict[str, dict[int, dict[str, Any]]] = {}  # id -> rung -> its result, not accepted
        self.items: dict[str, JobItem] = {}  # the pending items as the input has them (their own seeds)
        self.order: dict[str, int] = {}
        self.waiting: set[str] = set()  # ids between rungs

    @property
    def rungs(self) -> int:
        return len(self.ladder.ladder)

    def start(self, pending: list[JobItem], state: LedgerState, open_shards: set[int]) -> list[Final]:
        """Take up the pending items where the ledger left them; returns the final rows of those whose every
        rung is kept and none accepted (a driver killed before it wrote them)."""
        self.items = {item.id: item for item in pending}
        self.order = {item.id: i for i, item in enumerate(pending)}
        for row in self.ledger.rungs(sorted(open_shards), self.context.spec_hash):
            if row["id"] in self.items:
                self.kept.setdefault(row["id"], {})[int(row["rung"])] = row
        if self.total is not None:
            self.spent = self._spent_before(state, open_shards)
        self.waiting = set(self.items)
        return self.finish([i for i in self.items if len(self.kept.get(i, ())) == self.rungs])

    def _spent_before(self, state: LedgerState, open_shards: set[int]) -> int:
        """UNet evaluations of every final row (finished shards', open ones') and kept rung result so far."""
        spent = sum(_evals(r) for rungs in self.kept.values() for r in rungs.values())
        spent += sum(sum(r.get("rung_evals") or []) for r in state.rows.values())
        for shard in state.complete:
            table = self.ledger.read_table(shard_key(shard), ["rung_evals"])
            if "rung_evals" in table.column_names:
                spent += sum(sum(v or []) for v in table["rung_evals"].to_pylist())
        return spent

    def next_pass(self) -> list[RungItem]:
        """The waiting items of the lowest rung any waits for, in input order."""
        if not self.waiting:
            return []
        rung = min(self._next_rung(i) for i in self.waiting)
        ids = sorted((i for i in self.waiting if self._next_rung(i) == rung), key=self.order.__getitem__)
        self.waiting -= set(ids)
        return [self._rung_item(i, rung) for i in ids]

    def _next_rung(self, item_id: str) -> int:
        return max(self.kept.get(item_id, {0: None})) + 1

    def _rung_item(self, item_id: str, rung: int) -> RungItem:
        item, kept = self.items[item_id], self.kept.get(item_id)
        last = kept[max(kept)] if kept else None
        previous = None if last is None else {k: last.get(k) for k in TOTALS}
        return RungItem(**{**vars(item), "seed": rung_seed(item.seed, rung)}, rung=rung, previous=previous)

    def admit(self, item: RungItem) -> bool:
        """Whether the budget can pay for this rung (reserving its cap); an item already admitted stays so."""
        if item.id in self.reserved:
            return True
        cap = self.ladder.cap(item.rung) or 0
        if self.total is not None and self.spent + sum(self.reserved.values()) + cap > self.total:
            return False
        self.reserved[item.id] = cap
        return True

    def settle(self, item: JobItem, row: dict[str, Any]) -> list[Final]:
        """An outcome of an item's rung: the final rows it makes (none when the item goes up a rung)."""
        self.reserved.pop(item.id, None)
        if row.get("rung") is not None:
            self.spent += _evals(row)
        status = row["status"]
        if status == "unaccepted":  # a kept rung result (the worker wrote it under rungs/)
            self.kept.setdefault(item.id, {})[int(row["rung"])] = row
            if int(row["rung"]) < self.rungs:
                self.waiting.add(item.id)
                return []
            return self.finish([item.id])
        if status == "failed" and self.kept.get(item.id):  # a later rung failed: keep what the earlier ones made
            return self.finish([item.id], {"error_type": row.get("error_type"), "error": row.get("error")})
        self.kept.pop(item.id, None)
        return [(item, row)]

    def finish(self, ids: list[str], error: Optional[dict[str, Any]] = None) -> list[Final]:
        """End these items unaccepted: each one's best kept result (or, with nothing kept, no image) becomes
        its final row, written to the results before the driver counts it."""
        finals: list[Final] = []
        best_rows = []
        for item_id in ids:
            kept = self.kept.pop(item_id)
            self.waiting.discard(item_id)
            best = max(kept.values(), key=lambda r: (r["scores"].get(PASSED, 0), -r["final_loss"], r["rung"]))
            last = kept[max(kept)]
            best_rows.append({**best, "status": "unaccepted", "finished_at": now(), **(error or {}),
                              **{k: last.get(k) for k in TOTALS}})
        for row, uris in zip(best_rows, self.ledger.promote_rungs(best_rows)):
            row.update(uris)
        token = uuid.uuid4().hex
        for shard in sorted({r["shard"] for r in best_rows}):
            self.ledger.write_part(shard, token, [r for r in best_rows if r["shard"] == shard])
        for item_id, row in zip(ids, best_rows):
            finals.append((self.items[item_id], row))
        return finals

    def exhausted(self, items: list[JobItem]) -> list[Final]:
        """The budget cannot pay for these items' next rung: they end unaccepted (an item with nothing kept ends
        failed: only rungs that spend more than their budget can leave the first rung unpaid)."""
        unpaid = [(self.items[i.id], failure_row(self.items[i.id], self.context, "failed", "the job's budget "
                   f"(budget.total_unet_evals {self.total}) was spent before its first rung", 0))
                  for i in items if not self.kept.get(i.id)]
        for item, row in unpaid:
            row["error_type"] = "BudgetExhausted"
            self.waiting.discard(item.id)
        return self.finish([i.id for i in items if self.kept.get(i.id)]) + unpaid


def ladder_report(ledger: Ledger, ladder: LadderConfig, total: Optional[int]) -> dict[str, Any]:
    """What a ladder run has bought so far, from its final rows (`status`, the manifest, the summary): accepted and
    unaccepted items, UNet evaluations in all, per item and per accepted image, and per rung how many items ran it,
    how many it accepted and what it spent."""
    table = ledger.table(["id", "status", "rung", "rung_evals"])
    rows = [r for r in (table.to_pylist() if table is not None else []) if r.get("rung_evals")]
    accepted = sum(r["status"] == "ok" for r in rows)
    evals = sum(sum(r["rung_evals"]) for r in rows)
    rungs = []
    for k, method in enumerate(ladder.ladder, 1):
        ran = [r for r in rows if len(r["rung_evals"]) >= k]
        took = sum(r["status"] == "ok" and r["rung"] == k for r in ran)
        rungs.append({"rung": k, "method": method.name, "budget": method.budget, "items": len(ran), "accepted": took,
                      "acceptance": round(took / len(ran), 4) if ran else None,
                      "unet_evals": sum(r["rung_evals"][k - 1] for r in ran)})
    return {"accepted": accepted, "unaccepted": sum(r["status"] == "unaccepted" for r in rows), "unet_evals": evals,
            "unet_evals_per_item": round(evals / len(rows), 2) if rows else None,
            "unet_evals_per_accepted": round(evals / accepted, 2) if accepted else None,
            "budget": total, "rungs": rungs}
