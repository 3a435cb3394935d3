"""The engine: one model, one guidance and one method on one device; items in, images and scores out.

This is what `doodl-ray generate` and every job worker call. It loads the models once, turns a batch of
items into a `methods.base.Problem` (initial latents from each item's seed, counted views of the model,
decoder, guide and prior) and looks the method up by name. Each item's randomness comes from its own seeded
generator, so an item's result does not depend on which batch or position it ran in."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from doodl_ray.methods.registry import MethodConfig, check_budget
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.base import Guidance, evaluate
from doodl_ray.methods.base import Batch, Compute, Problem, counted, images01, stop_rule
from doodl_ray.methods.prior import DiffusionPrior
from doodl_ray.models import Diffusion, load_diffusion
from doodl_ray.sampling.chain import chain_sample

@dataclass(frozen=True)
class Item:
    """One image to generate. `target` is the guidance's target (class index or name, text, ...);
    `class_label` conditions class-conditional pixel models. `eval_target` is set by `Engine.validate`:
    the target as the evaluation model understands it."""

    id: str
    seed: int
    prompt: str | None = None
    target: Any = None
    class_label: int | None = None
    eval_target: Any = None


@dataclass
class ItemResult:
    id: str
    image: np.ndarray  # H x W x C, uint8
    initial_loss: float  # guidance loss of the unguided sample from the item's own noise
    final_loss: float  # guidance loss of the returned image
    best_iteration: int
    history: list[float]  # per-iteration loss (DOODL); [initial, final] for the other methods
    terms: dict[str, float] = field(default_factory=dict)  # final per-term guidance losses
    scores: dict[str, float] = field(default_factory=dict)  # readable scores: guide/*, eval/*, eval_initial/*
    seconds: float = 0.0
    compute: dict[str, int] = field(default_factory=dict)  # model evaluations this item cost (see methods.compute)
    noise_hash: str = ""  # sha256 of the item's initial latents (float32, C order): provenance
    initial_image: np.ndarray | None = None  # H x W x C uint8: the unguided sample from the same noise


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    """Loads the diffusion model and guidance once; `run` generates one batch of validated items."""

    def __init__(
        self, model: str | Diffusion, guidance: Guidance | Any | None = None, method: MethodConfig = MethodConfig(),
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        storage_options: dict[str, Any] | None = None, evaluation: Guidance | Any | None = None,
        micro_batch: int | None = None,
    ):
        if micro_batch is not None and micro_batch < 1:
            raise InvalidInput(f"micro_batch must be at least 1 (got {micro_batch})")
        self.micro_batch = micro_batch  # most rows per network call in the particle methods (None: all at once)
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.coupling_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.method = method
        if method.plugin.guided and guidance is None:
            raise InvalidInput(f"method {method.name!r} needs a guidance model")
        self.diffusion = model if isinstance(model, Diffusion) else load_diffusion(model, self.device, self.dtype,
                                                                                    storage_options)
        sampler = method.sampler
        self.latent_shape = tuple(self.diffusion.latent_shape(sampler.height, sampler.width))
        self.image_shape = tuple(self.diffusion.image_shape(sampler.height, sampler.width))
        self.guidance = self._guide(guidance, storage_options)
        self.evaluation = self._guide(evaluation, storage_options)
        self.stop = stop_rule(method, getattr(self.guidance, "name", None))
        self.schedule = self.diffusion.schedule(sampler.steps, self.latent_shape)
        passes = self.diffusion.passes(sampler.cfg_scale)
        check_budget(method, len(self.schedule) * passes, len(method.prior.levels) * passes)
        config = method
        self.needs_prior = bool(config.doodl.prior_weight or config.prior.selection or config.stop.prior)

    def validate(self, item: Item) -> Item:
        """Check an item before any GPU work; returns it with its target normalized."""
        if self.diffusion.needs_prompt and not (item.prompt or "").strip():
            raise InvalidInput(f"item {item.id!r}: this text-to-image model needs a non-empty prompt")
        classes = getattr(self.diffusion, "num_classes", None)
        if classes and (item.class_label is None or not 0 <= int(item.class_label) < classes):
            raise InvalidInput(f"item {item.id!r}: class label must be in [0, {classes})")
        if not 0 <= int(item.seed) < 2**63:
            raise InvalidInput(f"item {item.id!r}: seed must be in [0, 2**63)")
        if self.evaluation is not None:
            item = replace(item, eval_target=self.evaluation.validate_target(item.target, item.prompt))
        if self.guidance is None:
            return item
        return replace(item, target=self.guidance.validate_target(item.target, item.prompt))

    def _guide(self, guidance: Guidance | Any | None, storage_options: dict[str, Any] | None) -> Guidance | None:
        """A Guidance as given, or built from its spec, on this engine's device; a classifier file that does
        not say what it takes is given the images this model makes."""
        if guidance is not None and not isinstance(guidance, Guidance):
            from doodl_ray.guidance.spec import build_guidance

            guidance = build_guidance(guidance, self.device, storage_options, image_shape=self.image_shape)
        return guidance.to(self.device) if guidance is not None else None

    def run(self, items: Sequence[Item]) -> list[ItemResult]:
        """Generate a batch of validated items with the configured method."""
        start = time.perf_counter()
        problem = self.problem(items)
        result = self.method.plugin.run(problem, self.method)
        first = result.first_image if result.first_image is not None else self._unguided(items, problem.noise)
        targets = [item.target for item in items]
        initial, final = self._score(first, targets), self._score(result.image, targets)
        terms = self._terms(result.image, targets)
        scores = self._scores(items, result.image, first)
        for name, values in result.scores.items():
            for row, value in zip(scores, values):
                row[name] = value
        seconds = (time.perf_counter() - start) / len(items)
        pixels, first_pixels = to_uint8(result.image), to_uint8(first)
        return [
            ItemResult(
                item.id, pixels[i], float(initial[i]), float(final[i]), int(result.best_iteration[i]),
                [float(h) for h in result.history[i]], {k: float(v[i]) for k, v in terms.items()}, scores[i],
                seconds, problem.compute.item(i), noise_hash(problem.noise[i]), first_pixels[i],
            )
            for i, item in enumerate(items)
        ]

    def problem(self, items: Sequence[Item]) -> Problem:
        """The method's view of a batch: each item's noise, seed and generator, and counted model pieces."""
        seeds = [int(item.seed) for item in items]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        noise = self._noise(generators)
        compute = Compute(len(items))
        cfg = self.method.sampler.cfg_scale
        passes = self.diffusion.passes(cfg)

        def make_batch(rows: tuple[int, ...]) -> Batch:
            chosen = [items[r] for r in rows]
            eps = counted(self._condition(chosen), compute, rows, "unet", passes)
            targets = [item.target for item in chosen]
            loss = None
            if self.guidance is not None:
                loss = counted(lambda images, gens: self.guidance.loss(images, targets, gens), compute, rows, "guide")
            prior = None
            if self.needs_prior:
                prior = DiffusionPrior(eps, self.diffusion.training_pair, self.method.prior.levels, self.latent_shape,
                                       self.device, self.coupling_dtype)
            return Batch(list(rows), eps, counted(self.diffusion.decode, compute, rows, "decode"), loss, prior)

        def draw(candidate_seeds: Sequence[int]) -> Tensor:
            return self._noise([torch.Generator().manual_seed(int(s)) for s in candidate_seeds])

        return Problem(noise, seeds, self.schedule, generators, compute, passes, make_batch, draw,
                       lambda steps: self.diffusion.schedule(steps, self.latent_shape), self.stop, self.micro_batch)

    def _condition(self, items: Sequence[Item]):
        prompts = [item.prompt for item in items] if self.diffusion.needs_prompt else None
        labels = [item.class_label for item in items] if getattr(self.diffusion, "num_classes", None) else None
        return self.diffusion.condition(prompts, labels, self.method.sampler.cfg_scale)

    def _noise(self, generators: Sequence[torch.Generator]) -> Tensor:
        """Initial latents drawn on the CPU from each generator: identical on every device."""
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators])
        return noise.to(self.device, self.coupling_dtype)

    @torch.no_grad()
    def _unguided(self, items: Sequence[Item], noise: Tensor) -> Tensor:
        """The unguided single-chain sample from the items' noise, for reporting (not counted as the method's)."""
        return images01(self.diffusion.decode(chain_sample(noise, self.schedule, self._condition(items))))

    @torch.no_grad()
    def _score(self, image: Tensor, targets: list) -> Tensor:
        """Unaugmented guidance loss per item (NaN without guidance)."""
        if self.guidance is None:
            return torch.full((image.shape[0],), float("nan"), dtype=torch.float64)
        return self.guidance.loss(image, targets, None).to(torch.float64).cpu()

    @torch.no_grad()
    def _terms(self, image: Tensor, targets: list) -> dict[str, Tensor]:
        return {} if self.guidance is None else {k: v.cpu() for k, v in self.guidance.terms(image, targets, None).items()}

    @torch.no_grad()
    def _scores(self, items: Sequence[Item], image: Tensor, initial_image: Tensor) -> list[dict[str, float]]:
        """Readable per-item scores of the result by the guide and, where configured, by an independent
        evaluation model, before and after: gains that also convince a model that was not optimized against."""
        rows: list[dict[str, float]] = [{} for _ in items]
        if self.guidance is not None:
            for row, scores in zip(rows, evaluate(self.guidance, image, [i.target for i in items], "guide/")):
                row.update(scores)
        if self.evaluation is not None:
            eval_targets = [i.eval_target for i in items]
            for prefix, images in (("eval/", image), ("eval_initial/", initial_image)):
                for row, scores in zip(rows, evaluate(self.evaluation, images, eval_targets, prefix)):
                    row.update(scores)
        return rows

    @torch.no_grad()
    def prior(self, items: Sequence[Item], images01: Tensor, levels: Sequence[float]) -> Tensor:
        """The diffusion prior (methods.prior) of finished images of these items at `levels`, on the CPU: what an
        escalation ladder's acceptance rule reads (jobs.ladder_worker). Pixel models only, whose image is its
        own latent (a latent model's would need its encoder)."""
        if not self.diffusion.family.startswith("pixel"):
            raise InvalidInput(f"the diffusion prior of an image needs a pixel-space model, not {self.diffusion.family}")
        prior = DiffusionPrior(self._condition(items), self.diffusion.training_pair, levels, self.latent_shape,
                               self.device, self.coupling_dtype)
        return prior(images01.to(self.device, self.coupling_dtype) * 2 - 1).to("cpu", torch.float64)


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, C, H, W] in [0, 1] -> [B, H, W, C] uint8."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def noise_hash(noise: Tensor) -> str:
    """sha256 of one item's initial latents as float32 in C order: the same noise hashes the same anywhere."""
    return hashlib.sha256(noise.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
