"""Particles: Feynman-Kac steering (Singhal et al. 2025, `zacharyhorvitz/Fk-Diffusion-Steering`) with
one-step potentials, a sequential Monte Carlo baseline, with the strengthening of the classical-search study
(Zhang et al. 2025: low-variance resampling, a temperature rising over the steps, the max potential).

Each item runs K particles on a stochastic DDIM chain (η; for a flow model the same step in its own levels):
    z' = α' x̂0 + √(σ'² − c²) ε̂ + c ξ,   c = η σ' √(1 − SNR/SNR'),  SNR = α²/σ²   (`chain.stochastic_step`).
Every `interval` steps each particle's one-step estimate x̂0 is decoded and rewarded, r = −guide loss, and the
item's particles are resampled (`resampling`: multinomial as FK's code, or systematic / stratified / SSP, with
the item's own generator) in proportion to the potential G = exp(λ_k r_k − λ_prev r_prev) (`difference`: the
incremental weight of the tempered targets p·exp(λ_k r_k)) or exp(λ_k max_{s≤k} r_s) (`max`), with
λ_k = λ·min(1, (1 + γ)^k − 1) when `tempering` γ is set (λ without it). No gradient is taken. At the end the
particle with the best final ranking value (guide loss + prior.selection * prior) is the item's result."""

from __future__ import annotations

import math

import torch

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.base import (MethodResult, Problem, candidate_seed, particle_result, rank_value, rows_eps,
                                   rows_render, rows_score)
from doodl_ray.methods.resampling import resample, tempering
from doodl_ray.sampling.chain import stochastic_step


@torch.no_grad()
def particles(problem: Problem, config: MethodConfig) -> MethodResult:
    pc, schedule, n = config.particles, problem.schedule, len(problem)
    k = pc.count or 4
    if config.budget is not None and pc.count is None:  # each particle: one chain, and its prior when ranked by it
        k = max(1, config.budget // (problem.sample_cost() + (problem.prior_cost(len(config.prior.levels))
                                                              if config.prior.selection else 0)))
    rows = [i for i in range(n) for _ in range(k)]  # item-major: item i owns slots i*k .. i*k + k - 1
    seeds = [candidate_seed(problem.seeds[i], j) for i in range(n) for j in range(k)]
    step_noise = [torch.Generator().manual_seed(s ^ 0x5DEECE66D) for s in seeds]  # per slot, not the latents' stream
    z = problem.draw(seeds)
    tilt_prev = torch.zeros(len(rows), dtype=torch.float64)  # λ_prev r_prev of each particle's lineage
    reward_max = torch.full((len(rows),), -math.inf, dtype=torch.float64)
    history = [[] for _ in range(n)]
    for step in range(len(schedule)):
        out = rows_eps(problem, rows, z, schedule.timesteps[step])
        x0, eps = schedule.x0(z, out, step), schedule.noise(z, out, step)
        if (step + 1) % pc.interval == 0 and step < len(schedule) - 1:
            reward = -rows_score(problem, rows, x0)
            reward_max = torch.maximum(reward_max, reward)
            lam = pc.temperature * tempering(step + 1, pc.tempering)
            tilt = lam * reward
            log_g = tilt - tilt_prev if pc.potential == "difference" else lam * reward_max
            pick = resample(log_g.view(n, k), pc.resampling, [problem.generators[i] for i in range(n)])
            for i in range(n):
                history[i].append(float(-reward[i * k : (i + 1) * k].max()))
            z, x0, eps = z[pick.to(z.device)], x0[pick.to(z.device)], eps[pick.to(z.device)]
            tilt_prev, reward_max = tilt[pick], reward_max[pick]
        mean, c = stochastic_step(x0, eps, step, schedule, pc.eta)
        z = mean + c * _per_slot_randn(mean, step_noise) if c else mean
    image, score, prior = rows_render(problem, rows, z, bool(config.prior.selection))
    value = rank_value(score, prior, config)
    return particle_result(image, z, score, value.view(n, k).argmin(dim=1), history)


def _per_slot_randn(like: torch.Tensor, generators) -> torch.Tensor:
    """Standard normal noise for each particle slot from its own generator (on the CPU: the same on any device)."""
    return torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators]).to(like)
