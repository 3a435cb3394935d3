"""The worker's side of an escalation ladder (jobs.ladder): every rung's method on one set of loaded models, the
acceptance rule on each result, and where a result goes. An accepted result is final: its images go where the
output format wants them and its row to the results, as any job's. One that is not is kept under the ledger's
rungs/ (images first, then its row), for the driver (jobs.escalation) to send the item up a rung or to end it
`unaccepted` with its best image. Rows carry the rung, each rung's UNet evaluations and the totals so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from doodl_ray.jobs.escalation import PASSED
from doodl_ray.jobs.ladder import AcceptanceConfig
from doodl_ray.jobs.spec import JobSpec
from doodl_ray.jobs.worker import EngineProcessor, JobWorker, Outcome

if TYPE_CHECKING:
    from doodl_ray.engine import Engine
    from doodl_ray.jobs.escalation import RungItem


@dataclass
class Judged:
    """A rung's result with the acceptance rule's verdict; its other fields are the result's. `scores` and
    `compute` add the rule's own (accept/*, and what its prior and model cost)."""

    result: Any
    accepted: bool
    scores: dict[str, float] = field(default_factory=dict)
    compute: Optional[dict[str, int]] = None

    def __getattr__(self, name: str) -> Any:
        if name == "result":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.result, name)


@dataclass(frozen=True)
class Prepared:
    """A validated item on its rung: the engine's item, and its target as the acceptance model takes it."""

    id: str
    rung: int
    item: Any
    accept_target: Any = None


class Acceptance:
    """The acceptance rule (jobs.ladder.AcceptanceConfig) on finished images, with its model loaded once."""

    def __init__(self, config: AcceptanceConfig, engine: "Engine", storage_options: dict[str, Any]):
        from doodl_ray.guidance.spec import build_guidance

        self.config = config
        self.model = None if config.model is None else build_guidance(
            config.model, engine.device, storage_options, image_shape=engine.image_shape)

    def target(self, item: Any) -> Any:
        """An item's target as the acceptance model takes it (InvalidInput when it cannot)."""
        return None if self.model is None else self.model.validate_target(item.target, item.prompt)

    def judge(self, engine: "Engine", items: Sequence[Prepared], results: Sequence[Any]) -> list[Judged]:
        """Each result with its verdict: accepted when it meets every threshold set."""
        import numpy as np
        import torch

        from doodl_ray.guidance.base import evaluate

        config, n = self.config, len(results)
        images = torch.from_numpy(np.stack([r.image for r in results])).permute(0, 3, 1, 2).to(engine.device)
        images = images.float() / 255  # the image as it is saved: what the rule accepts is what the user gets
        passed = [0] * n
        scores: list[dict[str, float]] = [{} for _ in range(n)]
        extra = {"unet_forward": 0, "accept_forward": 0}
        if config.guide_max_loss is not None:
            passed = [p + (r.final_loss <= config.guide_max_loss) for p, r in zip(passed, results)]
        if config.prior is not None:
            prior = engine.prior([p.item for p in items], images, config.prior_levels)
            passed = [p + (float(v) <= config.prior) for p, v in zip(passed, prior)]
            for row, value in zip(scores, prior):
                row["accept/prior"] = float(value)
            extra["unet_forward"] = len(config.prior_levels) * engine.diffusion.passes(engine.method.sampler.cfg_scale)
        if self.model is not None:
            targets = [p.accept_target for p in items]
            with torch.no_grad():
                loss = self.model.loss(images, targets, None)
            passed = [p + (float(v) <= config.model_max_loss) for p, v in zip(passed, loss)]
            for row, found in zip(scores, evaluate(self.model, images, targets, "accept/")):
                row.update(found)
            extra["accept_forward"] = 1
        judged = []
        for result, met, own in zip(results, passed, scores):
            compute = dict(getattr(result, "compute", None) or {})
            for key, value in extra.items():
                compute[key] = compute.get(key, 0) + value
            compute["unet_evals"] = compute.get("unet_evals", 0) + extra["unet_forward"]
            judged.append(Judged(result, met == config.checks, {**result.scores, **own, PASSED: float(met)}, compute))
        return judged


class LadderProcessor(EngineProcessor):
    """The engine processor of a ladder: the first rung's engine loads the models, every other rung's engine
    shares them, and each batch (one rung's items) is judged by the acceptance rule."""

    def __init__(self, spec: JobSpec, device: str, storage_options: dict[str, Any]):
        from doodl_ray.engine import Engine

        super().__init__(spec, device, storage_options)
        first = self.engine
        self.engines = [first] + [Engine(first.diffusion, first.guidance, rung, device=first.device, dtype=first.dtype,
                                         evaluation=first.evaluation, micro_batch=first.micro_batch)
                                  for rung in spec.rungs[1:]]
        self.acceptance = Acceptance(spec.method.acceptance, first, storage_options)

    def validate(self, item: "RungItem") -> Prepared:  # type: ignore[override]
        prepared = self.engines[item.rung - 1].validate(self._item(item))
        return Prepared(item.id, item.rung, prepared, self.acceptance.target(prepared))

    def run(self, items: list[Prepared]) -> list[Judged]:  # type: ignore[override]
        (rung,) = {p.rung for p in items}  # the driver sends one rung per batch
        engine = self.engines[rung - 1]
        return self.acceptance.judge(engine, items, engine.run([p.item for p in items]))


def _accepted(result: Any) -> bool:
    """A result's verdict; a processor that does not judge (noop) accepts every result."""
    return bool(getattr(result, "accepted", True))


class LadderWorker(JobWorker):
    """The job worker of a ladder: results are judged, accepted ones are final, the others kept for the driver."""

    ENGINE = LadderProcessor

    def _write_images(self, item: "RungItem", result: Any, write: Any = None) -> dict[str, Optional[str]]:
        if _accepted(result):
            return super()._write_images(item, result)
        return super()._write_images(item, result, lambda shard, key, kind, png:
                                     self.ledger.write_rung_image(shard, key, item.rung, kind, png))

    def _row(self, item: "RungItem", result: Any, attempt: int, uris: dict[str, Optional[str]], started: Any,
             share: float) -> dict[str, Any]:
        """A rung's row: accepted (`ok`, final) or not (`unaccepted`, kept), with the totals of every rung so far."""
        row = super()._row(item, result, attempt, uris, started, share)
        previous = item.previous or {}
        compute = dict(previous.get("compute") or {})
        for key, value in (row["compute"] or {}).items():
            compute[key] = compute.get(key, 0) + value
        row.update(status="ok" if _accepted(result) else "unaccepted", rung=item.rung,
                   method=self.spec.rungs[item.rung - 1].name, compute=compute,
                   rung_evals=[*(previous.get("rung_evals") or []), int((row["compute"] or {}).get("unet_evals", 0))],
                   seconds=(previous.get("seconds") or 0.0) + row["seconds"],
                   gpu_seconds=(previous.get("gpu_seconds") or 0.0) + row["gpu_seconds"])
        return row

    def _persist(self, done: list[Outcome], shards: dict[str, int], write: Any = None) -> None:
        final = [o for o in done if o.row["status"] == "ok"]  # type: ignore[index]
        kept = [o for o in done if o.row["status"] != "ok"]  # type: ignore[index]
        super()._persist(final, shards)
        super()._persist(kept, shards, self.ledger.write_rungs)
