"""Particles: Feynman-Kac steering (Singhal et al. 2025, `zacharyhorvitz/Fk-Diffusion-Steering`) with
one-step potentials, a sequential Monte Carlo baseline.

Each item runs K particles on a stochastic DDIM chain (η; for a flow model the same step in its own levels):
    z' = α' x̂0 + √(σ'² − c²) ε̂ + c ξ,   c = η σ' √(1 − SNR/SNR'),  SNR = α²/σ².
Every `interval` steps each particle's one-step estimate x̂0 is decoded and rewarded, r = −guide loss, and the
item's particles are resampled (multinomially, with the item's own generator) in proportion to the potential
exp(λ (r − r_prev)) (`difference`) or exp(λ max_{s≤t} r_s) (`max`). No gradient is taken. At the end the
particle with the best final ranking value (guide loss + prior.selection * prior) is the item's result."""

from __future__ import annotations

import math

import torch

from doodl_ray.config import MethodConfig
from doodl_ray.methods.base import MethodResult, Problem, candidate_seed, images01, rank_value


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
    batch = problem.view(rows)
    z = problem.draw(seeds)
    reward_prev = torch.zeros(len(rows), dtype=torch.float64)
    reward_max = torch.full((len(rows),), -math.inf, dtype=torch.float64)
    history = [[] for _ in range(n)]
    for step in range(len(schedule)):
        out = batch.eps(z, schedule.timesteps[step])
        x0, eps = schedule.x0(z, out, step), schedule.noise(z, out, step)
        if (step + 1) % pc.interval == 0 and step < len(schedule) - 1:
            reward = -batch.score(images01(batch.decode(x0)))
            reward_max = torch.maximum(reward_max, reward)
            log_g = pc.temperature * (reward - reward_prev if pc.potential == "difference" else reward_max)
            pick = _resample(log_g.view(n, k), [problem.generators[i] for i in range(n)])
            for i in range(n):
                history[i].append(float(-reward[i * k : (i + 1) * k].max()))
            z, x0, eps = z[pick.to(z.device)], x0[pick.to(z.device)], eps[pick.to(z.device)]
            reward_prev, reward_max = reward[pick], reward_max[pick]
        z = _stochastic_step(x0, eps, step, schedule, pc.eta, [step_noise[j] for j in range(len(rows))])
    image = images01(batch.decode(z))
    score = batch.score(image)
    value = rank_value(score, batch.prior_cpu(z) if config.prior.selection else None, config)
    best = value.view(n, k).argmin(dim=1)
    chosen = torch.arange(n) * k + best
    for i in range(n):
        history[i].append(float(score[chosen[i]]))
    return MethodResult(image[chosen.to(image.device)], z[chosen.to(z.device)], history, best.tolist())


def _resample(log_g, generators) -> torch.Tensor:
    """Flat indices of each item's resampled particles: multinomial in proportion to exp(log_g), per item."""
    n, k = log_g.shape
    picks = []
    for i in range(n):
        weights = torch.softmax(log_g[i] - log_g[i].max(), dim=0)
        picks.append(i * k + torch.multinomial(weights, k, replacement=True, generator=generators[i]))
    return torch.cat(picks)


def _stochastic_step(x0, eps, k, schedule, eta, generators):
    """DDIM with stochasticity η from level k to the next, in the schedule's own (α, σ)."""
    alpha, sigma = float(schedule.alpha[k]), float(schedule.sigma[k])
    alpha_next, sigma_next = float(schedule.alpha_next[k]), float(schedule.sigma_next[k])
    c = 0.0
    if eta and sigma_next > 0 and alpha_next > 0:
        snr_ratio = (alpha / sigma) ** 2 / (alpha_next / sigma_next) ** 2
        c = eta * sigma_next * math.sqrt(max(0.0, 1 - snr_ratio))
    z = alpha_next * x0 + math.sqrt(max(0.0, sigma_next**2 - c**2)) * eps
    if c:
        xi = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators]).to(x0)
        z = z + c * xi
    return z
