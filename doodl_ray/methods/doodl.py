"""DOODL: optimize the initial noise so the guidance likes the true generated image.

Each iteration renders the image from the noise with the sampler (`doodl.sampler`: the model's own single chain,
or the paper's EDICT pair; no grad), decodes and scores the result (unaugmented: the score history and the
best-iterate choice), and, for items that go on, back-propagates the augmented loss through the sampler
(`sampling/gradient.py`, memory flat in the number of steps) and updates the noise; the noise is renormalized
to its initial norm so it stays on the typical-noise shell. The diffusion prior (`prior.py`) may join the
optimized loss (`doodl.prior_weight`) and the ranking (`prior.selection`). An item stops when it meets the
stopping rule, runs out of iterations, or would exceed its budget; the rest go on. With `doodl.optimize_steps`
the iterations run through a shorter sampler and the chosen noise is rendered once at `sampler.steps`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.methods.base import (
    Batch,
    MethodResult,
    Problem,
    check_finite,
    images01,
    rank_value,
    ranks_by_prior,
    rendered_again,
    unit_rms,
)
from doodl_ray.methods.best_of_n import Best, empty_best
from doodl_ray.sampling.chain import chain_sample
from doodl_ray.sampling.edict import edict_sample
from doodl_ray.sampling.gradient import ChainLoss, chain_backward, chain_forward


class NoiseUpdate:
    """The step on z_T for a set of items, with per-item state so any subset can step: the reference's
    clipped heavy-ball step with noise, a normalized step, or Adam (torch.optim.Adam's update, by hand)."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, z: Tensor, config: DoodlConfig):
        self.config = config
        self.buffer = torch.zeros_like(z)  # reference: momentum; adam: first moment
        self.second = torch.zeros_like(z) if config.optimizer == "adam" else None
        self.steps = torch.zeros(z.shape[0], dtype=torch.long)

    def __call__(self, at: Tensor, z: Tensor, grad: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """The updated z of the items at positions `at` (z, grad: theirs; generators: theirs)."""
        c = self.config
        self.steps[at] += 1
        if c.optimizer == "normalized":
            return z - c.lr * unit_rms(grad)
        if c.optimizer == "reference":
            step = (-c.grad_scale * grad).clamp(-c.clip, c.clip)
            self.buffer[at] = c.momentum * self.buffer[at] + step
            return z + self.buffer[at] + c.noise * _per_item_randn(z, generators)
        (b1, b2), t = self.BETAS, self.steps[at].to(z.dtype).view(-1, *[1] * (z.ndim - 1)).to(z.device)
        self.buffer[at] = b1 * self.buffer[at] + (1 - b1) * grad
        self.second[at] = b2 * self.second[at] + (1 - b2) * grad * grad
        denom = (self.second[at].sqrt() / (1 - b2**t).sqrt()) + self.EPS
        return z - (c.lr / (1 - b1**t)) * self.buffer[at] / denom


def doodl_loss(batch: Batch, generators: Sequence[torch.Generator], scale: float, prior_weight: float) -> ChainLoss:
    """The loss back-propagated through the chain: scale * augmented guide loss (+ weight * prior)."""

    def chain_loss(z0: Tensor) -> tuple[Tensor, Tensor]:
        image = images01(torch.utils.checkpoint.checkpoint(batch.decode, z0, use_reentrant=False))
        loss = scale * batch.loss(image, generators)
        if prior_weight:
            loss = loss + prior_weight * batch.prior(z0).to(loss.dtype)
        return loss, image

    return chain_loss


@dataclass
class Optimized:
    best: Best
    met: Tensor  # [B] bool: stopped because the stopping rule was met
    iterates: int  # iterates evaluated (the most any item reached)


def optimize(problem: Problem, config: MethodConfig, rows: list[int], noise: Tensor, best: Best | None = None,
             budgets: dict[int, int] | None = None, index_offset: int = 0) -> Optimized:
    """Run DOODL for the items `rows` from `noise` (theirs), folding every iterate into `best` (per item,
    ranked by guide loss + prior.selection * prior). Iterates are numbered from `index_offset`. An item stops
    at `doodl.iterations`, when it meets the stopping rule, or before it would exceed `budgets[item]`."""
    d, p, leapfrog = config.doodl, config.sampler.mix, config.sampler.leapfrog
    schedule = problem.schedule if d.optimize_steps is None else problem.schedule_at(d.optimize_steps)
    compute = problem.compute
    iterations = d.iterations if budgets is None else 10**9
    z, norm0 = noise.clone(), _norms(noise)
    update = NoiseUpdate(z, d)
    position = {row: k for k, row in enumerate(rows)}
    met = torch.zeros(len(problem), dtype=torch.bool)
    levels, rank_prior = len(config.prior.levels), ranks_by_prior(config)
    chains = 1 if d.sampler == "chain" else 2
    sample = len(schedule) * problem.passes
    cost = {  # UNet evaluations of an iterate's evaluation and of a gradient step: estimated, then measured
        "forward": chains * sample + (problem.prior_cost(levels) if rank_prior else 0),
        "backward": 2 * chains * sample + (2 * chains * problem.prior_cost(levels) if d.prior_weight else 0),
    }
    active, m, fresh = list(rows), -1, best is None
    for m in range(iterations + 1):
        if not active:
            break
        at = torch.tensor([position[r] for r in active])
        batch = problem.view(active)
        before = compute.unet(active[0])
        forward = chain_forward(z[at.to(z.device)], schedule, batch.eps, p, leapfrog, d.gradient, d.sampler)
        with torch.no_grad():
            image = images01(batch.decode(forward.x0))
        score = batch.score(image)
        prior = batch.prior_cpu(forward.x0) if rank_prior else None
        check_finite(score, f"guidance loss at iteration {m}")
        value = rank_value(score, prior, config)
        if best is None:
            best = empty_best(problem, image)
        if m == 0 and fresh and d.optimize_steps is None:  # iterate 0 is the unguided sample from the item's own noise
            best.first_image = image.clone()
        best.update(active, index_offset + m, image, z[at.to(z.device)], value, score)
        cost["forward"] = compute.unet(active[0]) - before
        done = problem.stopped(score, prior)
        met[torch.tensor(active)[done]] = True
        go = [k for k, row in enumerate(active) if not done[k] and m < iterations
              and (budgets is None or compute.unet(row) + cost["backward"] + cost["forward"] <= budgets[row])]
        if not go:
            break
        go_rows = [active[k] for k in go]
        go_at = at[go]
        step_batch = problem.view(go_rows)
        gens = [problem.generators[r] for r in go_rows]
        before = compute.unet(go_rows[0])
        grad = chain_backward(forward.select(torch.tensor(go).to(z.device)), schedule, step_batch.eps,
                              doodl_loss(step_batch, gens, config.guidance_scale, d.prior_weight), p, leapfrog).grad
        cost["backward"] = compute.unet(go_rows[0]) - before
        check_finite(grad, f"gradient at iteration {m}")
        device_at = go_at.to(z.device)
        stepped = update(go_at, z[device_at], grad, gens)
        z[device_at] = stepped * (norm0[device_at] / _norms(stepped))
        active = go_rows
    return Optimized(best, met, m + 1)


@torch.no_grad()
def render(problem: Problem, config: MethodConfig, noise: Tensor) -> Tensor:
    """Images of every item's noise at `sampler.steps` with DOODL's sampler (EDICT: its x chain)."""
    batch, schedule, sampler = problem.view(), problem.schedule, config.sampler
    if config.doodl.sampler == "chain":
        z0 = chain_sample(noise, schedule, batch.eps)
    else:
        z0, _ = edict_sample(noise, noise, schedule, batch.eps, sampler.mix, sampler.leapfrog)
    return images01(batch.decode(z0))


def doodl(problem: Problem, config: MethodConfig) -> MethodResult:
    rows, short = list(range(len(problem))), config.doodl.optimize_steps is not None
    final_render = (1 if config.doodl.sampler == "chain" else 2) * problem.sample_cost() if short else 0
    budgets = None if config.budget is None else {r: config.budget - final_render for r in rows}
    result = optimize(problem, config, rows, problem.noise, budgets=budgets).best.result()
    return rendered_again(result, render(problem, config, result.noise)) if short else result


def _norms(z: Tensor) -> Tensor:
    return z.flatten(1).norm(dim=1).view(-1, *[1] * (z.ndim - 1))


def _per_item_randn(like: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Noise drawn from each item's own generator on the CPU, so results do not depend on the batch or device."""
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators]).to(like)
