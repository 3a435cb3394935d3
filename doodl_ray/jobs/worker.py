"""The worker: one Ray actor per GPU that loads its models once and runs batches of items.

Each batch's images go straight to storage (where the output format stages them: jobs.formats), followed
by one results part per shard, so a finished item is durable before the driver even hears of it. Failures
are reported per item, never raised: a batch that fails as a whole is rerun item by item so one bad item
cannot take its batch-mates down with it.
What runs per batch is a pluggable *processor* (validate(item), run(items) -> results with the fields of
doodl_ray.engine.ItemResult): the Engine for real work, the no-op one to measure orchestration. Rows
record each result's provenance: its own (noise hash, compute counts) and, from the processor's
`provenance` record when it has one, the setup it was made with (doodl_ray.provenance)."""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from doodl_ray.errors import InvalidInput, NonFiniteLoss
from doodl_ray.jobs.formats import KINDS
from doodl_ray.jobs.ledger import Ledger, ShardFinished
from doodl_ray.jobs.reader import JobItem
from doodl_ray.jobs.rows import RowContext, base_row, now
from doodl_ray.jobs.spec import JobSpec
from doodl_ray.jobs.storage import Storage
from doodl_ray.provenance import fingerprint
from doodl_ray.plugins import load_attribute

PERMANENT_ERRORS = (InvalidInput, NonFiniteLoss)
"""Errors that will recur on any worker: recorded at once, never retried."""


class Processor(Protocol):
    """What a worker runs. `validate` checks an item and returns what `run` takes for it (anything with the
    item's `id`), so an item is prepared once; results carry doodl_ray.engine.ItemResult's fields (the
    provenance ones, compute, noise_hash and initial_image, are optional). An optional `provenance`
    attribute (a dict, e.g. doodl_ray.provenance.describe's) is recorded with every row."""

    def validate(self, item: JobItem) -> Any: ...

    def run(self, items: list[Any]) -> Sequence[Any]: ...


@dataclass
class NoopResult:
    """A result with ItemResult's fields and a blank image: what the no-op processor returns."""

    id: str
    image: np.ndarray
    initial_loss: float = 0.0
    final_loss: float = 0.0
    best_iteration: int = 0
    history: list[float] = field(default_factory=list)
    terms: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class NoopProcessor:
    """Returns a blank image per item after `seconds` of simulated work: the orchestration overhead alone."""

    def __init__(self, seconds: float = 0.0, size: int = 8, channels: int = 3):
        self.seconds = float(seconds)
        self.blank = np.zeros((size, size, channels), dtype=np.uint8)

    def validate(self, item: JobItem) -> JobItem:
        return item

    def run(self, items: list[JobItem]) -> list[NoopResult]:
        time.sleep(self.seconds * len(items))
        return [NoopResult(item.id, self.blank, seconds=self.seconds) for item in items]


class EngineProcessor:
    """doodl_ray.engine.Engine behind the processor interface; targets default to the reference image."""

    def __init__(self, spec: JobSpec, device: str, storage_options: dict[str, Any]):
        import torch

        from doodl_ray.engine import Engine
        from doodl_ray.provenance import describe

        dtype = getattr(torch, spec.dtype) if spec.dtype else None
        self.engine = Engine(spec.model, spec.guidance, spec.rungs[0], device=device, dtype=dtype,
                             storage_options=storage_options, evaluation=spec.evaluation,
                             micro_batch=spec.resources.micro_batch)
        self.provenance = describe(spec, self.engine.device, self.engine.dtype, storage_options)

    def _item(self, item: JobItem) -> Any:
        from doodl_ray.engine import Item

        target = item.target if item.target is not None else item.reference
        return Item(id=item.id, seed=item.seed, prompt=item.prompt, target=target, class_label=item.class_label)

    def validate(self, item: JobItem) -> Any:
        """The engine's item with its target normalized (reference images read once, here)."""
        return self.engine.validate(self._item(item))

    def run(self, items: list[Any]) -> list[Any]:
        return self.engine.run(items)


def pick_device(gpus: float) -> str:
    """cuda when this actor was given a GPU and one is visible (Ray sets CUDA_VISIBLE_DEVICES), else cpu."""
    if gpus <= 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_processor(spec: JobSpec, storage_options: dict[str, Any], threads: int,
                    engine: type = EngineProcessor) -> Processor:
    """The processor the spec names: engine (this class of it), noop, or 'package.module:factory'."""
    name, options = spec.processor.name, spec.processor.options
    if name == "noop":
        return NoopProcessor(**options)
    device = pick_device(spec.resources.gpus_per_actor)
    if device == "cpu":
        import torch

        torch.set_num_threads(threads)  # oversubscribed CPU threads slow torch 10-100x
    if name == "engine":
        return engine(spec, device, storage_options)
    return load_attribute(name)(spec, device, storage_options, **options)


@dataclass
class Outcome:
    """One item's result from one attempt: its finished row, or the error and whether to retry."""

    id: str
    row: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    permanent: bool = False
    status: str = "ok"  # ok | failed | rejected (final statuses when permanent)

    @classmethod
    def failure(cls, item_id: str, exc: BaseException) -> "Outcome":
        permanent = isinstance(exc, PERMANENT_ERRORS)
        status = "rejected" if isinstance(exc, InvalidInput) else "failed"
        return cls(item_id, error=" ".join(str(exc).split())[:2000] or type(exc).__name__,
                   error_type=type(exc).__name__, permanent=permanent, status=status)


def encode_png(image: np.ndarray) -> bytes:
    """HxWxC uint8 (C = 1, 3 or 4) -> PNG bytes."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class JobWorker:
    """Ray actor body (wrapped with ray.remote by the driver, which sets its GPUs and CPUs)."""

    ENGINE: type = EngineProcessor  # what processor "engine" is for this kind of worker

    def __init__(self, spec: JobSpec, context: RowContext, name: str):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.spec, self.context, self.name = spec, context, f"{socket.gethostname()}/{name}"
        storage = Storage(spec.output.uri, spec.storage.fsspec_options(spec.output.uri), spec.retries)
        self.ledger = Ledger(storage, spec.output.format)
        model_options = spec.storage.fsspec_options("s3://")  # models and reference images may live on S3
        self.processor = build_processor(spec, model_options, max(1, int(spec.resources.cpus_per_actor)), self.ENGINE)
        setup = getattr(self.processor, "provenance", None)
        self.setup = {"provenance": setup or None, "provenance_hash": fingerprint(setup) if setup else None}
        self.lease = ""  # the batch in hand's (an actor runs one batch at a time): its staging, its parts' names

    def ready(self) -> str:
        """Answers once the constructor (model loading) has finished: the id of the node it runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def process(self, batch: list[tuple[JobItem, int]], lease: str) -> list[Outcome]:
        """Run one batch for the attempt `lease` the driver sent it with; `batch` pairs each item with its
        attempt number (1-based). Its images are staged under the lease; for a shard already finished nothing
        is written (the batch is an abandoned attempt's, which nobody waits for: jobs.ledger, Fencing)."""
        self.lease = lease
        outcomes: dict[str, Outcome] = {}
        valid: list[tuple[JobItem, Any, int]] = []
        for item, attempt in batch:
            try:
                valid.append((item, self.processor.validate(item), attempt))
            except Exception as exc:
                outcomes[item.id] = Outcome.failure(item.id, exc)
        started = now()
        clock = time.perf_counter()
        results = self._run([prepared for _, prepared, _ in valid])
        share = (time.perf_counter() - clock) / max(1, len(valid))
        finished = {shard for shard in {item.shard for item, _, _ in valid} if self.ledger.finished(shard)}
        for item, _, attempt in valid:
            result = results[item.id] if item.shard not in finished else ShardFinished(f"shard {item.shard}")
            if isinstance(result, BaseException):
                outcomes[item.id] = Outcome.failure(item.id, result)
                continue
            try:
                uris = self._write_images(item, result)
            except Exception as exc:
                outcomes[item.id] = Outcome.failure(item.id, exc)
                continue
            outcomes[item.id] = Outcome(item.id, row=self._row(item, result, attempt, uris, started, share))
        self._persist([o for o in outcomes.values() if o.row is not None], {i.id: i.shard for i, _ in batch})
        return [outcomes[item.id] for item, _ in batch]

    def _row(self, item: JobItem, result: Any, attempt: int, uris: dict[str, Optional[str]], started: Any,
             share: float) -> dict[str, Any]:
        """The row of a finished item: the result's losses, scores, compute and provenance."""
        compute = getattr(result, "compute", None)
        row = base_row(item, self.context, "ok", attempt)
        row.update(
            **uris, initial_loss=float(result.initial_loss), final_loss=float(result.final_loss),
            best_iteration=int(result.best_iteration), history=[float(v) for v in result.history],
            terms={k: float(v) for k, v in result.terms.items()},
            scores={k: float(v) for k, v in result.scores.items()}, started_at=started,
            finished_at=now(), seconds=float(result.seconds), worker=self.name,
            gpu_seconds=share * self.spec.resources.gpus_per_actor,
            noise_hash=getattr(result, "noise_hash", None) or None,
            compute={k: int(v) for k, v in sorted(compute.items())} if compute else None,
            **self.setup,
        )
        return row

    def _write_images(self, item: JobItem, result: Any,
                      write: Optional[Callable[[int, str, str, bytes], str]] = None) -> dict[str, Optional[str]]:
        """The result's image and, when it has one, its unguided initial image (written by `write`, default staged
        under the batch's lease); their URIs by row column."""
        write = write or (lambda shard, key, kind, png: self.ledger.write_image(shard, self.lease, key, kind, png))
        images = {kind: getattr(result, kind, None) for kind in KINDS}  # ItemResult.image, .initial_image
        return {f"{kind}_uri": None if image is None else write(item.shard, item.key, kind, encode_png(image))
                for kind, image in images.items()}

    def _run(self, items: list[Any]) -> dict[str, Any]:
        """Results (or exceptions) by id; a batch that fails is rerun one item at a time to find the culprit."""
        if not items:
            return {}
        try:
            return {r.id: r for r in self.processor.run(items)}
        except Exception as exc:
            if len(items) == 1:
                return {items[0].id: exc}
        results: dict[str, Any] = {}
        for item in items:
            results.update(self._run([item]))
        return results

    def _persist(self, done: list[Outcome], shards: dict[str, int],
                 write: Optional[Callable[[int, str, list[dict[str, Any]]], None]] = None) -> None:
        """One results part per shard (or what `write` keeps), named by the batch's lease; if it cannot be
        written (or its shard was finished meanwhile), the items are not done (retried)."""
        write = write or self.ledger.write_part
        token = f"{self.lease}-{uuid.uuid4().hex}"
        by_shard: dict[int, list[Outcome]] = {}
        for outcome in done:
            by_shard.setdefault(shards[outcome.id], []).append(outcome)
        for shard, outcomes in by_shard.items():
            try:
                write(shard, token, [o.row for o in outcomes])  # type: ignore[misc]
            except Exception as exc:
                for outcome in outcomes:
                    failed = Outcome.failure(outcome.id, exc)
                    outcome.row, outcome.error, outcome.error_type = None, failed.error, failed.error_type
                    outcome.permanent, outcome.status = failed.permanent, failed.status
