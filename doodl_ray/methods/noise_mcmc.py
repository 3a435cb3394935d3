"""Markov chains over the initial noise that keep the Gaussian prior (preconditioned Crank-Nicolson), targeting
    π(z) ∝ N(z; 0, I) exp(r(render(z)) / α),   r = −guide loss of the rendered image,
the tilted distribution of the sampler's own images, exactly (Metropolis-Hastings). Several chains per item;
every state's render is scored and the best (guide loss + prior.selection * prior) is rendered again at
`sampler.steps` as the item's result.

- `noise-langevin` (pCNL, Cotter et al. 2013; Ψ-Sampler's move): y = ρ z + √(1 − ρ²)(ξ + (√h/2) g(z)) with
  g = ∇ log exp(r/α), the exact gradient of the true rendered pixels through the whole single chain
  (`sampling/gradient.py`, checkpointed), its per-item RMS clipped at `drift_clip`; ρ = (1 − h/4)/(1 + h/4);
  accepted with probability min(1, e^{J(y, z) − J(z, y)}), J(a, b) = Φ(a) − (h/8)‖g(a)‖² + (√h/2)⟨(b − ρa)/√(1 − ρ²), g(a)⟩.
- `noise-mcmc` (pCN, no gradient): the same chains without the drift (J = Φ), at a third of the cost per move.

Chains render through `render_steps` levels (a cheaper, coarser sampler than the result's; None: sampler.steps).
The guide sees the same crops of an item at every evaluation (seeded per item), so r is a function of z, as
Metropolis-Hastings needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from doodl_ray.methods.base import MethodResult, Problem, candidate_seed, images01, rank_value, rendered_again
from doodl_ray.methods.best_of_n import empty_best
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.noise_mcmc import NoiseMcmcConfig, evaluation_cost
from doodl_ray.sampling.chain import chain_sample
from doodl_ray.sampling.gradient import chain_backward, chain_forward

CROP_SALT = 0x2545F491  # an item's fixed crop stream


@dataclass
class State:
    """Chains' current points: noise, log target Φ = r/α, its (clipped) gradient, and the short render."""

    z: Tensor
    phi: Tensor  # [n] float64 on the CPU
    drift: Tensor | None  # g(z), clipped; None without gradients
    image: Tensor
    score: Tensor  # unaugmented guide loss of the render, [n] float64 on the CPU
    value: Tensor  # ranking value, [n]


def noise_langevin(problem: Problem, config: MethodConfig) -> MethodResult:
    return _chains(problem, config, config.noise_langevin, gradient=True)


def noise_mcmc(problem: Problem, config: MethodConfig) -> MethodResult:
    return _chains(problem, config, config.noise_mcmc, gradient=False)


def _chains(problem: Problem, config: MethodConfig, mc: NoiseMcmcConfig, gradient: bool) -> MethodResult:
    n, chains = len(problem), mc.chains
    schedule = problem.schedule if mc.render_steps is None else problem.schedule_at(mc.render_steps)
    per_step = problem.passes
    cost = evaluation_cost(len(schedule), gradient, config.prior.selection > 0, len(config.prior.levels)) * per_step
    final = problem.sample_cost()
    rounds = mc.rounds
    if config.budget is not None:
        rounds = max(0, (config.budget - final) // (chains * cost) - 1)
    rows = [i for i in range(n) for _ in range(chains)]  # item-major
    seeds = [candidate_seed(problem.seeds[i], j) for i in range(n) for j in range(chains)]
    crop_seeds = [problem.seeds[i] ^ CROP_SALT for i in rows]
    moves = [torch.Generator().manual_seed(s ^ 0x5DEECE66D) for s in seeds]  # per chain: proposals and acceptance
    h = mc.step_size
    rho = (1 - h / 4) / (1 + h / 4)
    state = _evaluate(problem, config, mc, rows, problem.draw(seeds), schedule, crop_seeds, gradient)
    best = empty_best(problem, state.image)
    best.update(rows, list(range(chains)) * n, state.image, state.z, state.value, state.score)
    accepted = torch.zeros(len(rows))
    for m in range(rounds):
        xi = torch.stack([torch.randn(state.z.shape[1:], generator=g) for g in moves]).to(state.z)
        step = xi if state.drift is None else xi + math.sqrt(h) / 2 * state.drift
        proposal = _evaluate(problem, config, mc, rows, rho * state.z + math.sqrt(1 - rho * rho) * step, schedule,
                             crop_seeds, gradient)
        log_a = _joint(proposal, state, rho, h) - _joint(state, proposal, rho, h)
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in moves])
        take = torch.log(u) < log_a
        accepted += take
        state = _select(take, proposal, state)
        index = [chains * (m + 1) + j for _ in range(n) for j in range(chains)]
        best.update(rows, index, proposal.image, proposal.z, proposal.value, proposal.score)
    result = best.result()
    result.scores["mcmc/acceptance"] = [float(accepted[i * chains:(i + 1) * chains].mean()) / max(rounds, 1)
                                        for i in range(n)]
    if mc.render_steps is not None:  # the chosen noise at the result's own number of steps
        batch = problem.view()
        with torch.no_grad():
            result = rendered_again(result, images01(batch.decode(chain_sample(result.noise, problem.schedule, batch.eps))))
    return result


def _evaluate(problem: Problem, config: MethodConfig, mc: NoiseMcmcConfig, rows: list[int], z: Tensor, schedule,
              crop_seeds: list[int], gradient: bool) -> State:
    """Render every chain's noise, score it, and (with gradients) differentiate Φ through the whole chain."""
    batch = problem.view(rows)
    crops = lambda: [torch.Generator().manual_seed(s) for s in crop_seeds]  # noqa: E731  the same crops every time

    def chain_loss(z0: Tensor) -> tuple[Tensor, Tensor]:
        image = images01(batch.decode(z0))
        return batch.loss(image, crops()), image

    sampler = config.sampler
    if gradient:
        forward = chain_forward(z, schedule, batch.eps, sampler.mix, sampler.leapfrog, "checkpoint", "chain")
        out = chain_backward(forward, schedule, batch.eps, chain_loss, sampler.mix, sampler.leapfrog)
        loss, image, z0 = out.loss, out.image, out.finals[0]
        drift = _clip(-out.grad / mc.kl, mc.drift_clip)
    else:
        with torch.no_grad():
            z0 = chain_sample(z, schedule, batch.eps)
            loss, image = chain_loss(z0)
        drift = None
    score = batch.score(image)
    prior = batch.prior_cpu(z0) if config.prior.selection else None
    phi = -loss.detach().to("cpu", torch.float64) / mc.kl
    return State(z, phi, drift, image, score, rank_value(score, prior, config))


def _clip(g: Tensor, limit: float) -> Tensor:
    """Each item's drift scaled down to RMS `limit` where it is larger (a deterministic function of z: MH holds)."""
    rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30)
    return g * (limit / rms).clamp(max=1.0).view(-1, *[1] * (g.ndim - 1))


def _joint(a: State, b: State, rho: float, h: float) -> Tensor:
    """log π(a) q(b | a) up to terms that cancel (pCN keeps N(0, I): its prior terms cancel)."""
    if a.drift is None:
        return a.phi
    g = a.drift.flatten(1).to(torch.float64)
    shift = ((b.z - rho * a.z).flatten(1).to(torch.float64) / math.sqrt(1 - rho * rho))
    return a.phi + (-(h / 8) * g.pow(2).sum(1) + (math.sqrt(h) / 2) * (shift * g).sum(1)).cpu()


def _select(take: Tensor, new: State, old: State) -> State:
    pick = lambda a, b: torch.where(take.to(a.device).view(-1, *[1] * (a.ndim - 1)), a, b)  # noqa: E731
    return State(pick(new.z, old.z), torch.where(take, new.phi, old.phi),
                 None if new.drift is None else pick(new.drift, old.drift), pick(new.image, old.image),
                 torch.where(take, new.score, old.score), torch.where(take, new.value, old.value))
