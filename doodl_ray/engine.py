"""The engine: one model, one guidance and one method on one device; items in, images and scores out.

This is what `doodl-ray generate` and every job worker call. Each item's randomness comes from its own
seeded generator, so an item's result does not depend on which batch or position it ran in."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from doodl_ray.baselines import one_step_guided_eps
from doodl_ray.config import MethodConfig
from doodl_ray.denoiser import LatentTextDiffusion, PixelDiffusion
from doodl_ray.doodl import doodl, images01
from doodl_ray.edict import EpsFn, edict_sample
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.base import Guidance, evaluate
from doodl_ray.models import load_diffusion
from doodl_ray.prior import DiffusionPrior
from doodl_ray.schedule import ddim_schedule

GUIDED_METHODS = ("doodl", "one-step", "best-of-n")


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
        self, model: str, guidance: Guidance | Any | None = None, method: MethodConfig = MethodConfig(),
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        storage_options: dict[str, Any] | None = None, evaluation: Guidance | Any | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.coupling_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.method = method
        if method.name in GUIDED_METHODS and guidance is None:
            raise InvalidInput(f"method {method.name!r} needs a guidance model")
        self.guidance = self._guide(guidance, storage_options)
        self.evaluation = self._guide(evaluation, storage_options)
        self.diffusion = load_diffusion(model, self.device, self.dtype, storage_options)
        self.latent_shape = self.diffusion.latent_shape(method.sampler.height, method.sampler.width)
        self.schedule = ddim_schedule(self.diffusion.scheduler_config, method.sampler.steps)

    def validate(self, item: Item) -> Item:
        """Check an item before any GPU work; returns it with its target normalized."""
        if isinstance(self.diffusion, LatentTextDiffusion) and not (item.prompt or "").strip():
            raise InvalidInput(f"item {item.id!r}: this text-to-image model needs a non-empty prompt")
        if isinstance(self.diffusion, PixelDiffusion) and self.diffusion.num_classes:
            if item.class_label is None or not 0 <= int(item.class_label) < self.diffusion.num_classes:
                raise InvalidInput(f"item {item.id!r}: class label must be in [0, {self.diffusion.num_classes})")
        if not 0 <= int(item.seed) < 2**63:
            raise InvalidInput(f"item {item.id!r}: seed must be in [0, 2**63)")
        if self.evaluation is not None:
            item = replace(item, eval_target=self.evaluation.validate_target(item.target, item.prompt))
        if self.guidance is None:
            return item
        return replace(item, target=self.guidance.validate_target(item.target, item.prompt))

    def _guide(self, guidance: Guidance | Any | None, storage_options: dict[str, Any] | None) -> Guidance | None:
        """A Guidance as given, or built from its spec, on this engine's device."""
        if guidance is not None and not isinstance(guidance, Guidance):
            from doodl_ray.guidance.spec import build_guidance

            guidance = build_guidance(guidance, self.device, storage_options)
        return guidance.to(self.device) if guidance is not None else None

    def run(self, items: Sequence[Item]) -> list[ItemResult]:
        """Generate a batch of validated items with the configured method."""
        start = time.perf_counter()
        targets = [item.target for item in items]
        generators = [torch.Generator().manual_seed(int(item.seed)) for item in items]
        noise = self._noise(generators)
        eps = self._eps(items)
        method, sampler = self.method, self.method.sampler
        best_iteration = [0] * len(items)
        if method.name == "doodl":
            result = doodl(
                noise, self.schedule, eps, self._chain_loss(targets, generators),
                lambda im: self._score(im, targets), self.diffusion.decode, method.doodl, generators,
                sampler.mix, sampler.leapfrog, self._prior(eps),
            )
            image, initial_image, history = result.image, result.first_image, result.history
            initial, best_iteration = history[0], result.best_iteration.tolist()
        else:
            initial_image = self._sample(noise, eps)
            initial = self._score(initial_image, targets)
            if method.name == "none":
                image = initial_image
            elif method.name == "one-step":
                guided = one_step_guided_eps(
                    eps, self.diffusion.decode, self.diffusion.alphas_cumprod,
                    lambda im: self.guidance.loss(im, targets, generators), method.guidance_scale,
                    method.normalize_gradient,
                )
                image = self._sample(noise, guided)
            else:
                image, best_iteration = self._best_of_n(items, eps, targets, initial_image, initial)
        final = self._score(image, targets)
        if method.name != "doodl":
            history = torch.stack([initial, final])
        terms = self._terms(image, targets)
        scores = self._scores(items, image, initial_image)
        seconds = (time.perf_counter() - start) / len(items)
        pixels = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [
            ItemResult(
                item.id, pixels[i], float(initial[i]), float(final[i]), int(best_iteration[i]),
                [float(h) for h in history[:, i]], {k: float(v[i]) for k, v in terms.items()}, scores[i], seconds,
            )
            for i, item in enumerate(items)
        ]

    def _noise(self, generators: Sequence[torch.Generator]) -> Tensor:
        """Initial latents drawn on the CPU from each item's generator: identical on every device."""
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators])
        return noise.to(self.device, self.coupling_dtype)

    def _eps(self, items: Sequence[Item]) -> EpsFn:
        if isinstance(self.diffusion, LatentTextDiffusion):
            return self.diffusion.condition([item.prompt for item in items], self.method.sampler.cfg_scale)
        return self.diffusion.condition([item.class_label for item in items] if self.diffusion.num_classes else None)

    @torch.no_grad()
    def _sample(self, noise: Tensor, eps: EpsFn) -> Tensor:
        x0, _ = edict_sample(noise, noise, self.schedule, eps, self.method.sampler.mix, self.method.sampler.leapfrog)
        return images01(self.diffusion.decode(x0))

    def _prior(self, eps: EpsFn) -> DiffusionPrior | None:
        config = self.method.doodl
        if not (config.prior_weight or config.prior_selection):
            return None
        return DiffusionPrior(
            eps, self.diffusion.alphas_cumprod, config.prior_levels, self.latent_shape, self.device, self.coupling_dtype
        )

    def _chain_loss(self, targets: list, generators: Sequence[torch.Generator]):
        scale = self.method.guidance_scale

        def chain_loss(z0: Tensor) -> tuple[Tensor, Tensor]:
            image = images01(torch.utils.checkpoint.checkpoint(self.diffusion.decode, z0, use_reentrant=False))
            return scale * self.guidance.loss(image, targets, generators), image

        return chain_loss

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

    def _best_of_n(self, items, eps, targets, first_image, first_score):
        """Sample N candidates per item (candidate 0 is the item's own noise), keep the best by the guide."""
        best_image, best_score = first_image.clone(), first_score.clone()
        best_index = [0] * len(items)
        for j in range(1, self.method.candidates):
            generators = [torch.Generator().manual_seed(candidate_seed(item.seed, j)) for item in items]
            image = self._sample(self._noise(generators), eps)
            score = self._score(image, targets)
            better = score < best_score
            best_score = torch.where(better, score, best_score)
            best_image[better.to(best_image.device)] = image[better.to(image.device)]
            best_index = [j if b else i for i, b in zip(best_index, better.tolist())]
        return best_image, best_index


def candidate_seed(seed: int, j: int) -> int:
    """A stable seed for an item's j-th best-of-N candidate."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{j}".encode()).digest()[:8], "big") >> 1
