"""What every method is given and what it returns, and how its compute is counted.

A method is one function `method(problem, config) -> MethodResult` over plain tensors and functions (the
k-diffusion `sampling.py` style): `problem.view(rows)` hands it the model output, decoder, guidance loss,
unaugmented score and diffusion prior for any rows of its batch (a row is an item index; rows may repeat,
e.g. one per particle), each counted per item. Counting is exact, not estimated: every call adds its
network passes to the items of its rows, and a VJP is counted when autograd actually back-propagates
through that call's output. `budget` is spent in UNet evaluations: forward passes plus VJPs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.errors import InvalidInput, NonFiniteLoss
from doodl_ray.sampling.edict import EpsFn
from doodl_ray.sampling.schedule import Schedule

COMPUTE_KEYS = ("unet_forward", "unet_vjp", "guide_forward", "guide_vjp", "decode_forward", "decode_vjp")


class Compute:
    """Per-item counts of model evaluations (keys: COMPUTE_KEYS)."""

    def __init__(self, items: int):
        self.counts = {key: [0] * items for key in COMPUTE_KEYS}

    def add(self, key: str, rows: Sequence[int], amount: int = 1) -> None:
        column = self.counts[key]
        for row in rows:
            column[row] += amount

    def unet(self, item: int) -> int:
        """UNet evaluations (forward + VJP) an item has cost so far: what budgets are in."""
        return self.counts["unet_forward"][item] + self.counts["unet_vjp"][item]

    def item(self, item: int) -> dict[str, int]:
        return {key: column[item] for key, column in self.counts.items()} | {"unet_evals": self.unet(item)}


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts one VJP through the call that produced its input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, tally: Callable[[], None]) -> Tensor:  # type: ignore[override]
        ctx.tally = tally
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        ctx.tally()
        return grad, None


def counted(fn: Callable[..., Tensor], compute: Compute, rows: Sequence[int], kind: str, amount: int = 1):
    """`fn` with its forward calls and VJPs counted for `rows` under `kind`_forward / `kind`_vjp."""
    rows = list(rows)

    def call(*args: Any) -> Tensor:
        out = fn(*args)
        compute.add(f"{kind}_forward", rows, amount)
        if out.requires_grad:
            out = _CountBackward.apply(out, lambda: compute.add(f"{kind}_vjp", rows, amount))
        return out

    return call


@dataclass
class Batch:
    """The model pieces for some rows of a problem, every call counted for those rows' items."""

    rows: list[int]
    eps: EpsFn  # (z [len(rows), ...], t) -> model output
    decode: Callable[[Tensor], Tensor]  # latents -> images in [-1, 1]
    loss: Callable[[Tensor, Sequence[torch.Generator] | None], Tensor]  # images01 -> [len(rows)], augmented
    prior: Callable[[Tensor], Tensor] | None  # clean latents -> [len(rows)] training loss

    def score(self, images: Tensor) -> Tensor:
        """Unaugmented guidance loss on the CPU in float64: what results are ranked and stopped by."""
        with torch.no_grad():
            return self.loss(images, None).to("cpu", torch.float64)

    def prior_cpu(self, z0: Tensor) -> Tensor:
        with torch.no_grad():
            return self.prior(z0).to("cpu", torch.float64)


@dataclass
class Problem:
    """One batch of items for a method: their initial latents and seeds, the schedule, and a counted view of
    the models for any rows. `draw(seeds)` gives initial latents for other seeds (candidates, particles)."""

    noise: Tensor  # [B, *latent] each item's initial latents
    seeds: list[int]
    schedule: Schedule
    generators: list[torch.Generator]  # per item: crops, update noise, resampling
    compute: Compute
    passes: int  # network passes per item per eps call (2 with CFG): budgets are counted in passes
    make_batch: Callable[[tuple[int, ...]], Batch]
    draw: Callable[[Sequence[int]], Tensor]
    schedule_at: Callable[[int], Schedule]  # the model's schedule at another number of steps
    stop: Callable[[Tensor, Tensor | None], Tensor] | None = None  # (score, prior) -> [n] bool: item is done
    micro_batch: int | None = None  # most rows per network call; None: each method's own (all rows at once)

    def __post_init__(self) -> None:
        self._views = lru_cache(maxsize=None)(self.make_batch)  # a problem lives one batch: each row set built once

    def __len__(self) -> int:
        return self.noise.shape[0]

    def view(self, rows: Sequence[int] | None = None) -> Batch:
        return self._views(tuple(range(len(self)) if rows is None else rows))

    def parts(self, count: int, default: int | None = None) -> list[slice]:
        """`count` rows as slices of at most `micro_batch` rows (else `default`, else all): one network call per
        slice bounds what a call holds (activations, and with a gradient its graph) whatever the particle count;
        rows keep their own generators, so the split changes results only by the rounding of batched kernels."""
        size = self.micro_batch or default or count
        return [slice(lo, min(lo + size, count)) for lo in range(0, count, size)]

    def sample_cost(self) -> int:
        """UNet evaluations of one single-chain sample."""
        return len(self.schedule) * self.passes

    def prior_cost(self, levels: int) -> int:
        """UNet evaluations of one prior evaluation at `levels` noise levels."""
        return levels * self.passes

    def stopped(self, score: Tensor, prior: Tensor | None) -> Tensor:
        """Which of these results meet the stopping rule ([n] bool; all False without a rule)."""
        if self.stop is None:
            return torch.zeros(score.shape[0], dtype=torch.bool)
        return self.stop(score, prior)


@dataclass
class MethodResult:
    """Per item: the result image, the latents it was sampled from, a score trace, and which step of the
    method made it (DOODL iteration, candidate index, ...)."""

    image: Tensor  # [B, C, H, W] in [0, 1]
    noise: Tensor  # [B, *latent]
    history: list[list[float]]  # per item: the unaugmented loss of each iterate / candidate, in order
    best_iteration: list[int]
    first_image: Tensor | None = None  # the unguided sample from the item's own noise, when the method made one
    scores: dict[str, list[float]] = field(default_factory=dict)  # per item: method-specific readable scores


@torch.no_grad()
def rows_eps(problem: Problem, rows: Sequence[int], z: Tensor, t: Any) -> Tensor:
    """The network output of every row (an item index per row of z) at timestep t, a `problem.parts` slice per
    call."""
    return torch.cat([problem.view(rows[part]).eps(z[part], t) for part in problem.parts(len(rows))])


def rows_score(problem: Problem, rows: Sequence[int], z0: Tensor, default: int | None = None) -> Tensor:
    """Unaugmented guide loss of every row's decoded clean latents (`rows_render`'s score)."""
    return rows_render(problem, rows, z0, False, default)[1]


@torch.no_grad()
def rows_render(problem: Problem, rows: Sequence[int], z0: Tensor, with_prior: bool,
                default: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every row's image, unaugmented guide loss and (`with_prior`) diffusion prior, a `problem.parts` slice per
    call."""
    images, scores, priors = [], [], []
    for part in problem.parts(len(rows), default):
        batch = problem.view(rows[part])
        images.append(images01(batch.decode(z0[part])))
        scores.append(batch.score(images[-1]))
        if with_prior:
            priors.append(batch.prior_cpu(z0[part]))
    return torch.cat(images), torch.cat(scores), torch.cat(priors) if with_prior else None


def particle_result(image: Tensor, z: Tensor, score: Tensor, best: Tensor, history: list[list[float]]) -> MethodResult:
    """Each item's chosen particle (`best`: its index among the item's K, rows item-major) as the result, the
    chosen particle's score ending the item's history."""
    n = best.shape[0]
    chosen = torch.arange(n) * (image.shape[0] // n) + best
    for i in range(n):
        history[i].append(float(score[chosen[i]]))
    return MethodResult(image[chosen.to(image.device)], z[chosen.to(z.device)], history, best.tolist())


def medoids(image: Tensor, n: int) -> Tensor:
    """Each of n items' particle (rows item-major) with the least summed pixel L2 distance to the item's other
    particles: a particle filter's population approximates the tilted target, and its medoid is a robust point of
    it, where the largest weight or best guide loss picks the member that pushed the guide hardest."""
    flat = image.reshape(n, image.shape[0] // n, -1).to(torch.float64)
    return torch.cdist(flat, flat).sum(2).argmin(1).cpu()


def rendered_again(result: MethodResult, image: Tensor) -> MethodResult:
    """`result` with `image` (its chosen noise rendered at `sampler.steps`) in place of the shorter render the
    method optimized through, whose loss stays as the `short_render/loss` score."""
    result.scores["short_render/loss"] = [h[j] for h, j in zip(result.history, result.best_iteration)]
    result.image = image
    return result


def images01(decoded: Tensor) -> Tensor:
    """Decoder output in [-1, 1] -> image in [0, 1]."""
    return ((decoded + 1) / 2).clamp(0, 1)


def unit_rms(t: Tensor) -> Tensor:
    """Each item scaled to unit root-mean-square, so a step size means the same at every noise level."""
    return t / t.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30).view(-1, *[1] * (t.ndim - 1))


def check_finite(values: Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        bad = [i for i in range(values.shape[0]) if not torch.isfinite(values[i]).all()]
        raise NonFiniteLoss(f"non-finite {what} (rows {bad})")


def rank_value(score: Tensor, prior: Tensor | None, config: MethodConfig) -> Tensor:
    """What results are ranked by: guide loss + prior.selection * prior (the loss alone without a prior)."""
    return score + config.prior.selection * prior if prior is not None and config.prior.selection else score


def ranks_by_prior(config: MethodConfig) -> bool:
    """Whether results are ranked or stopped by the diffusion prior (so every result's prior is evaluated)."""
    return bool(config.prior.selection) or config.stop.prior is not None


def stop_rule(config: MethodConfig, guidance_kind: str | None) -> Callable[[Tensor, Tensor | None], Tensor] | None:
    """The per-item stopping rule of `config.stop`, or None when none is set."""
    stop = config.stop
    if not stop.enabled:
        return None
    if stop.target_probability is not None and guidance_kind != "classifier":
        raise InvalidInput("stop.target_probability needs classifier guidance; use stop.guide_loss")
    max_loss = stop.guide_loss if stop.guide_loss is not None else -math.log(stop.target_probability)

    def rule(score: Tensor, prior: Tensor | None) -> Tensor:
        done = score <= max_loss
        if stop.prior is not None:  # a result whose prior the budget could not afford is not known to be done
            done = done & (prior <= stop.prior) if prior is not None else torch.zeros_like(done)
        return done

    return rule


def candidate_seed(seed: int, j: int) -> int:
    """A stable seed for an item's j-th candidate noise (j = 0 is the item's own seed)."""
    import hashlib

    if j == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{seed}:{j}".encode()).digest()[:8], "big") >> 1
