"""The driver: owns the actor pool and the ledger, and sees every item through to exactly one result row.

Why not Ray Data: its block-level retries drop failed blocks without a record and have no per-item time
budget. Here each item is tracked individually: dispatched in batches with backpressure (a few batches
queued per actor), retried on any actor after a jittered exponential backoff when the failure is
transient, recorded at once when it is permanent, and recorded as failed, with its error, once its
attempts are spent. An actor that dies or overruns its batch's time budget is killed and replaced; its
queued batches go back to the queue, and the running batch's items are retried alone, so a poison item
only ever costs its own attempts."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError, RayTaskError

from doodl_ray.errors import RunInterrupted
from doodl_ray.jobs.escalation import Escalation, ladder_report
from doodl_ray.jobs.health import ClusterWatch
from doodl_ray.jobs.ladder import LadderConfig
from doodl_ray.jobs.ladder_worker import LadderWorker
from doodl_ray.jobs.ledger import Ledger, LedgerState, ids_hash
from doodl_ray.jobs.metrics import RunRecorder, RunTally
from doodl_ray.jobs.preflight import preflight
from doodl_ray.jobs.reader import InputPlan, JobItem
from doodl_ray.jobs.spec import JobSpec
from doodl_ray.jobs.rows import STATUSES, WITH_IMAGES, RowContext, failure_row, now, rejected_row
from doodl_ray.jobs.storage import Storage, backoff_delay
from doodl_ray.jobs.worker import JobWorker, Outcome
from doodl_ray.provenance import code_version

log = logging.getLogger(__name__)
WAIT_TICK = 0.5  # seconds between progress refreshes while nothing completes
SUSPECT_SECONDS = 60.0  # how long a node where an actor died unasked is avoided while Ray still reports it alive
HEAD_LOST, NO_CAPACITY = "head_lost", "no_capacity"  # manifest states of an interrupted run


@dataclass
class RunSummary:
    """What a run did; `computed` counts items run by this invocation, `resumed` those found done."""

    run_id: str
    output: str
    session: str
    rows: int
    ok: int
    failed: int
    rejected: int
    computed: int
    resumed: int
    seconds: float
    cost: dict[str, Any] = field(default_factory=dict)
    head_lost: bool = False  # the cluster's head did not answer at the end (Ray cannot shut down cleanly)
    unaccepted: int = 0
    ladder: dict[str, Any] = field(default_factory=dict)  # an escalation ladder's report (jobs.escalation)

    @property
    def items_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        unaccepted = f"{self.unaccepted} unaccepted, " if self.ladder else ""
        return (f"run {self.run_id}: {self.rows} rows -> {self.ok} ok, {unaccepted}{self.failed} failed, "
                f"{self.rejected} rejected; computed {self.computed} this run ({self.items_per_s:.2f} items/s over "
                f"{self.seconds:.1f} s), {self.resumed} already done; results in {self.output}"
                + self._ladder_text() + self._cost_text())

    def _ladder_text(self) -> str:
        per = self.ladder.get("unet_evals_per_accepted")
        return "" if not self.ladder else (f"; {self.ladder['unet_evals']} UNet evaluations"
                                           + (f", {per:.0f} per accepted image" if per is not None else ""))

    def _cost_text(self) -> str:
        if self.cost.get("estimated_usd") is None:
            return ""
        return f"; GPU {self.cost['gpu_seconds']:.0f} s ~ ${self.cost['estimated_usd']:.2f}"


@dataclass(eq=False)
class _Entry:
    item: JobItem
    attempts: int = 0  # attempts finished so far
    solo: bool = False  # run alone next time (its last batch failed as a whole)


@dataclass(eq=False)
class _Batch:
    entries: list[_Entry]
    ref: Any = None
    deadline: float = float("inf")


@dataclass(eq=False)
class _Slot:
    index: int
    generation: int = 0
    actor: Any = None
    ready_ref: Any = None
    ready: bool = False
    start_failures: int = 0
    restart_at: float = 0.0
    ready_by: float = float("inf")  # startup deadline
    node: str | None = None  # the id of the node its actor runs on, once ready
    inflight: deque = field(default_factory=deque)


class Driver:
    """One invocation of a job: plan, resume, dispatch, record."""

    def __init__(self, spec: JobSpec, *, force: bool = False, retry_failed: bool = False, progress: bool = True,
                 on_progress: Callable[[dict[str, int]], None] | None = None, metrics: RunRecorder | None = None):
        self.spec, self.force, self.retry_failed, self.show_progress = spec, force, retry_failed, progress
        self.on_progress = on_progress
        self.metrics = metrics or RunTally(spec.resources.gpu_hourly_price)
        self.session = uuid.uuid4().hex[:12]
        storage = Storage(spec.output.uri, spec.storage.fsspec_options(spec.output.uri), spec.retries)
        self.ledger = Ledger(storage, spec.output.format)
        self.spec_hash = spec.result_hash()
        self.context = RowContext(self.session, self.spec_hash, spec.method.name, spec.model, code_version())
        self.counts = {status: 0 for status in STATUSES}
        ladder = spec.method if isinstance(spec.method, LadderConfig) else None
        self.ladder = None if ladder is None else Escalation(ladder, spec.budget.total_unet_evals, self.ledger,
                                                              self.context)
        self.computed = 0
        self._seq = itertools.count()
        self.slots: list[_Slot] = []
        self.suspects: dict[str, float] = {}  # node id -> when an actor died there unasked
        self.last_start_failure = "no actor became ready"

    # ---- setup -------------------------------------------------------------------------------------

    def _manifest(self, plan: InputPlan, state: str, started: str, finished: str | None = None) -> dict[str, Any]:
        import platform

        import pyarrow

        return {
            "run_id": self.spec.run_id, "state": state, "session": self.session, "spec_hash": self.spec_hash,
            "started_at": started, "finished_at": finished, "spec": self.spec.public_dump(),
            "versions": {"doodl_ray": self.context.code_version, "ray": ray.__version__, "pyarrow": pyarrow.__version__,
                         "python": platform.python_version()},
            "input_files": plan.files,
            "totals": {"rows": plan.rows, "items": len(plan.items), "rejected": len(plan.rejected),
                       "shards": len(plan.shard_ids), **self.counts},
            "cost": self.metrics.cost(),
            **({"ladder": ladder_report(self.ledger, self.ladder.ladder, self.ladder.total)} if self.ladder else {}),
        }

    # ---- run -----------------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        started = now().isoformat()
        checked = preflight(self.spec, force=self.force, retry_failed=self.retry_failed)
        plan, state = checked.plan, checked.resume or LedgerState()
        assert plan is not None  # online, the input is always read
        if self.force:
            self.ledger.clear()
        self.ledger.write_manifest(self._manifest(plan, "running", started))
        pending = self._setup_shards(plan, state)
        self.slots = [_Slot(i) for i in range(min(self.spec.resources.actors, len(pending)))]
        self.watch = ClusterWatch(self.spec.timeouts.head_seconds)
        self._progress_bar(plan.rows)
        try:
            if pending:
                self._dispatch(pending, state)
        except RunInterrupted as exc:
            manifest = self._manifest(plan, exc.state, started, now().isoformat())
            self.ledger.write_manifest({**manifest, "interruption": str(exc)})
            raise
        finally:
            self._close_progress()
        self.ledger.tidy()  # every shard is finished
        manifest = self._manifest(plan, "finished", started, now().isoformat())
        self.ledger.write_manifest(manifest)
        self.watch.poll(force=True)
        return RunSummary(self.spec.run_id, self.spec.output.uri, self.session, plan.rows, self.counts["ok"],
                          self.counts["failed"], self.counts["rejected"], self.computed, self.resumed,
                          time.perf_counter() - t0, self.metrics.cost(), self.watch.unreachable_since is not None,
                          unaccepted=self.counts["unaccepted"], ladder=manifest.get("ladder", {}))

    def _setup_shards(self, plan: InputPlan, state: LedgerState) -> list[JobItem]:
        """Shard bookkeeping from the ledger; finalizes shards with nothing left; returns the items to run."""
        self.plan = plan
        self.shard_rows: dict[int, dict[str, dict]] = {s: {} for s in plan.shard_ids if s not in state.complete}
        for marker in state.complete.values():
            for status in self.counts:
                self.counts[status] += marker.get(status, 0)
        self.unnamed: dict[int, list[dict]] = {}  # rejected rows without an id, in row order, by shard
        for row in plan.rejected:
            if row.shard in self.shard_rows:
                if row.id:
                    self.shard_rows[row.shard][row.id] = rejected_row(row, self.context)
                else:
                    self.unnamed.setdefault(row.shard, []).append(rejected_row(row, self.context))
                self.counts["rejected"] += 1
        done = state.done_ids(self.retry_failed)
        self.resumed = len(done) + sum(m.get(s, 0) for m in state.complete.values() for s in (*WITH_IMAGES, "failed"))
        for item_id in done:
            row = state.rows[item_id]
            self.shard_rows[row["shard"]][item_id] = row
            self.counts[row["status"]] += 1
        pending = [i for i in plan.items if i.shard in self.shard_rows and i.id not in done]
        self.remaining = {s: 0 for s in self.shard_rows}
        for item in pending:
            self.remaining[item.shard] += 1
        self.ledger.reopen(s for s, left in self.remaining.items() if left)
        for shard, left in self.remaining.items():
            if left == 0:
                self._finalize(shard)
        return pending

    def _finalize(self, shard: int) -> None:
        rows, unnamed = self.shard_rows.pop(shard), iter(self.unnamed.pop(shard, []))
        ordered = [rows[i] if i else next(unnamed) for i in self.plan.shard_ids[shard]]
        self.ledger.finalize_shard(shard, ordered, ids_hash(self.plan.shard_ids[shard]), self.spec_hash)

    def _settle(self, item: JobItem, row: dict[str, Any]) -> None:
        """An item's outcome: its final row or, on a ladder, a rung result it may climb from (jobs.escalation)."""
        rows = self.shard_rows.get(item.shard)
        if rows is None or item.id in rows:
            return  # already final (a duplicate report after a restart)
        for final_item, final_row in self.ladder.settle(item, row) if self.ladder else [(item, row)]:
            self._record(final_item, final_row)

    def _record(self, item: JobItem, row: dict[str, Any]) -> None:
        """An item's final row: count it, and close its shard when it was the last one."""
        if item.id in self.shard_rows.get(item.shard, {}):
            return  # already final (a duplicate report after a restart)
        self.shard_rows[item.shard][item.id] = row
        self.counts[row["status"]] += 1
        if row["status"] in WITH_IMAGES:
            self.metrics.item_done(row.get("seconds"), row.get("gpu_seconds"))
        elif row["status"] == "failed":
            self.metrics.item_failed()
        self.computed += 1
        self.remaining[item.shard] -= 1
        if self.remaining[item.shard] == 0:
            self._finalize(item.shard)
        self._tick(1)

    # ---- actors ----------------------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        res = self.spec.resources
        slot.generation += 1
        name = f"doodl-ray.{self.spec.run_id}.{self.session}.w{slot.index}.{slot.generation}"
        slot.actor = ray.remote(JobWorker if self.ladder is None else LadderWorker).options(
            num_gpus=res.gpus_per_actor, num_cpus=res.cpus_per_actor, name=name, max_restarts=0, max_concurrency=1,
            **self._placement(),
        ).remote(self.spec, self.context, name)
        slot.ready_ref, slot.ready, slot.node = slot.actor.ready.remote(), False, None
        slot.ready_by = time.monotonic() + self.spec.timeouts.startup_seconds

    def _placement(self) -> dict[str, Any]:
        """Prefer nodes other than those where an actor just died unasked while Ray still reports them alive
        (Ray takes seconds to a minute to mark a lost node dead, and would place the replacement there); any
        node when no other one can take the actor."""
        clock = time.monotonic()
        self.suspects = {node: since for node, since in self.suspects.items()
                         if clock - since < SUSPECT_SECONDS and node in self.watch.alive}
        if not self.suspects:
            return {}
        return {"label_selector": {"ray.io/node-id": f"!in({','.join(sorted(self.suspects))})"},
                "fallback_strategy": [{"label_selector": {}}]}

    def _stop(self, slot: _Slot, queue: deque, error_type: str, reason: str, restart_delay: float = 0.0) -> None:
        """Kill a slot's actor: its running batch failed (see _batch_failed), its queued batches go back."""
        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        batches = list(slot.inflight)
        slot.inflight.clear()
        slot.actor, slot.ready_ref, slot.ready = None, None, False
        slot.restart_at = time.monotonic() + restart_delay
        for batch in reversed(batches[1:]):
            queue.extendleft(reversed(batch.entries))
        if batches:
            self._batch_failed(batches[0], queue, error_type, reason)

    def _batch_failed(self, batch: _Batch, queue: deque, error_type: str, reason: str) -> None:
        """A failure that cannot be pinned on one item: a single item pays an attempt; a batch's items are
        rerun alone first, free, so a poison item never spends its batch-mates' attempts."""
        if len(batch.entries) == 1:
            self._retry_or_fail(batch.entries[0], error_type, reason)
            return
        for entry in reversed(batch.entries):
            entry.solo = True
            queue.appendleft(entry)

    def _retry_or_fail(self, entry: _Entry, error_type: str, error: str) -> None:
        """A transient failure: retry alone after a backoff, or record the item as failed when out of attempts."""
        entry.attempts += 1
        entry.solo = True
        if entry.attempts >= self.spec.retries.attempts:
            row = failure_row(entry.item, self.context, "failed", error, entry.attempts)
            row["error_type"] = error_type
            self._settle(entry.item, row)
            return
        delay = backoff_delay(self.spec.retries, entry.attempts)
        heapq.heappush(self.delayed, (time.monotonic() + delay, next(self._seq), entry))

    def _handle(self, batch: _Batch, outcomes: list[Outcome]) -> None:
        entries = {e.item.id: e for e in batch.entries}
        for outcome in outcomes:
            entry = entries[outcome.id]
            if outcome.row is not None:
                self._settle(entry.item, outcome.row)
            elif outcome.permanent:
                row = failure_row(entry.item, self.context, outcome.status, outcome.error or "", entry.attempts + 1)
                row["error_type"] = outcome.error_type
                self._settle(entry.item, row)
            else:
                self._retry_or_fail(entry, outcome.error_type or "Error", outcome.error or "")

    def _dispatch(self, pending: list[JobItem], state: LedgerState) -> None:
        spec = self.spec
        queue: deque[_Entry] = deque(_Entry(item) for item in pending)
        self.delayed: list = []
        slots, self.capacity_seen = self.slots, time.monotonic()
        if self.ladder is not None:  # a ladder hands the items out a pass (a rung) at a time
            queue.clear()
            for item, row in self.ladder.start(pending, state, set(self.shard_rows)):
                self._record(item, row)
        try:
            while self.shard_rows:
                clock = time.monotonic()
                self._check_cluster(clock)
                while self.delayed and self.delayed[0][0] <= clock:
                    queue.append(heapq.heappop(self.delayed)[2])
                if self.ladder is not None and not self.delayed and not any(s.inflight for s in slots):
                    self._climb(queue)
                for slot in slots:
                    if slot.actor is None and clock >= slot.restart_at:
                        self._start(slot)
                    elif not slot.ready and slot.actor is not None and clock > slot.ready_by:
                        self._start_failed(slot, queue, f"not ready after {spec.timeouts.startup_seconds:g} s "
                                           "(are the requested GPUs/CPUs available?)")
                    while slot.ready and len(slot.inflight) < spec.resources.inflight_per_actor and self._admit(queue):
                        self._submit(slot, queue)
                    if slot.inflight and slot.inflight[0].deadline < clock:
                        head = slot.inflight[0]
                        self._stop(slot, queue, "TimeoutError", f"over the time budget of "
                                   f"{spec.timeouts.item_seconds:g} s per item (batch of {len(head.entries)})")
                refs = {s.ready_ref: s for s in slots if s.ready_ref is not None and not s.ready}
                refs.update({b.ref: s for s in slots for b in s.inflight})
                wake = [WAIT_TICK] + [d[0] - clock for d in self.delayed[:1]]
                wake += [s.inflight[0].deadline - clock for s in slots if s.inflight]
                if not refs:
                    time.sleep(max(0.0, min(wake)))
                    continue
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, min(wake)))
                if ready:
                    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
                for ref in ready:
                    self._complete(refs[ref], ref, queue)
                self._tick(0)
        finally:
            for slot in slots:
                if slot.actor is not None:
                    ray.kill(slot.actor, no_restart=True)

    def _admit(self, queue: deque) -> bool:
        """Whether the queue's next item may go now (on a ladder: the budget can pay for its rung)."""
        return bool(queue) and (self.ladder is None or self.ladder.admit(queue[0].item))

    def _climb(self, queue: deque) -> None:
        """A ladder with nothing in flight: the next pass starts when this one is done, and the items the budget
        cannot pay for end unaccepted (nothing in flight can leave budget over for them)."""
        if not queue:
            queue.extend(_Entry(item) for item in self.ladder.next_pass())
        elif not self._admit(queue):
            unpaid = [entry for entry in queue if not self.ladder.admit(entry.item)]
            for entry in unpaid:
                queue.remove(entry)
            for item, row in self.ladder.exhausted([entry.item for entry in unpaid]):
                self._record(item, row)

    def _submit(self, slot: _Slot, queue: deque) -> None:
        entries = [queue.popleft()]
        while (not entries[0].solo and queue and not queue[0].solo and len(entries) < self.spec.resources.batch_size
               and self._admit(queue)):
            entries.append(queue.popleft())
        lease = f"{self.session}-w{slot.index}-{slot.generation}"  # the actor incarnation's: fencing, jobs.ledger
        batch = _Batch(entries, slot.actor.process.remote([(e.item, e.attempts + 1) for e in entries], lease))
        if not slot.inflight:
            batch.deadline = self._deadline(batch)
        slot.inflight.append(batch)

    def _deadline(self, batch: _Batch) -> float:
        budget = self.spec.timeouts.item_seconds
        return time.monotonic() + budget * len(batch.entries) if budget else float("inf")

    def _start_failed(self, slot: _Slot, queue: deque, reason: str) -> None:
        """The job goes on with the actors it has; this slot is tried again after a growing delay."""
        slot.start_failures += 1
        self.last_start_failure = f"worker {slot.index}: {reason}"
        delay = backoff_delay(self.spec.retries, slot.start_failures)
        log.warning("worker %d failed to start (%s); %d of %d actors running, next try in %.0f s", slot.index,
                    reason, self._ready_actors(), len(self.slots), delay)
        self._stop(slot, queue, "WorkerStartError", reason, delay)

    def _ready_actors(self) -> int:
        return sum(slot.ready for slot in self.slots)

    def _check_cluster(self, clock: float) -> None:
        """Stop the run (a rerun resumes) when the cluster's head is lost, or when no actor has been able to
        run for timeouts.no_capacity_seconds."""
        self.watch.poll()
        if self.watch.head_lost:
            raise RunInterrupted(f"lost the Ray cluster's head at {self.watch.address} (no answer for "
                                 f"{self.watch.unreachable_for:.0f} s); {self._resume_text()}", HEAD_LOST)
        if self._ready_actors():
            self.capacity_seen = clock
        elif clock - self.capacity_seen > self.spec.timeouts.no_capacity_seconds:
            raise RunInterrupted(f"no actor could run for {self.spec.timeouts.no_capacity_seconds:g} s "
                                 f"({self.last_start_failure}); "
                                 f"{self._resume_text()}", NO_CAPACITY)

    def _resume_text(self) -> str:
        done = sum(self.counts.values())
        return f"rerun resumes from the ledger, {done} of {self.plan.rows} items done"

    def _complete(self, slot: _Slot, ref: Any, queue: deque) -> None:
        if ref is slot.ready_ref or ref == slot.ready_ref:
            try:
                slot.node = ray.get(ref)
                slot.ready, slot.start_failures = True, 0
            except Exception as exc:
                self._start_failed(slot, queue, _short(exc))
            return
        batch = next((b for b in slot.inflight if b.ref == ref), None)
        if batch is None:
            return
        try:
            outcomes = ray.get(ref)
        except RayActorError as exc:
            log.warning("worker %d died: %s", slot.index, _short(exc))
            if slot.node is not None:
                self.suspects[slot.node] = time.monotonic()
            self._stop(slot, queue, "WorkerDied", _short(exc))
            return
        except RayTaskError as exc:
            slot.inflight.remove(batch)
            self._batch_failed(batch, queue, "WorkerError", _short(exc))
        else:
            slot.inflight.remove(batch)
            self._handle(batch, outcomes)
        if slot.inflight and slot.inflight[0].deadline == float("inf"):
            slot.inflight[0].deadline = self._deadline(slot.inflight[0])

    # ---- progress ----------------------------------------------------------------------------------

    def _progress_bar(self, total: int) -> None:
        """A bar on a terminal, a plain line every few seconds in logs (jobs.progress)."""
        self.bar = None
        if self.show_progress:
            from doodl_ray.jobs.progress import progress_bar

            self.bar = progress_bar(self.spec.run_id, total, initial=sum(self.counts.values()))
            self._tick(0)

    def _tick(self, n: int) -> None:
        done = sum(self.counts.values())
        if self.on_progress is not None:
            self.on_progress({**self.counts, "computed": self.computed})
        ready = self._ready_actors()
        self.metrics.actors(ready, len(self.slots))
        if self.bar is not None:
            unaccepted = {"unaccepted": self.counts["unaccepted"]} if self.ladder is not None else {}
            self.bar.set_postfix(ok=self.counts["ok"], **unaccepted, failed=self.counts["failed"],
                                 rejected=self.counts["rejected"], left=self.bar.total - done,
                                 actors=f"{ready}/{len(self.slots)}", refresh=False)
            self.bar.update(n)

    def _close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _short(exc: BaseException) -> str:
    """One line from a Ray error (whose text embeds a whole remote traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "~"))]
    return (useful[-1] if useful else type(exc).__name__)[:500]


def run_job(spec: JobSpec, *, force: bool = False, retry_failed: bool = False, progress: bool = True,
            on_progress: Callable[[dict[str, int]], None] | None = None,
            metrics: RunRecorder | None = None) -> RunSummary:
    """Run (or resume) a job on the Ray cluster this process is connected to; `metrics` receives every item's
    final outcome (default: an in-process tally, whose cost the manifest records)."""
    return Driver(spec, force=force, retry_failed=retry_failed, progress=progress, on_progress=on_progress,
                  metrics=metrics).run()
