"""DAS: Diffusion Alignment as Sampling (Kim et al., ICLR 2025, `krafton-ai/DAS`): sequential Monte Carlo with
twisted proposals and tempering, a baseline that uses the one-step gradient.

Target p(x0) exp(r(x0)/α) with r = −guide loss (log p(target) for a classifier) and α = `das.kl`. Each item's K
particles run the stochastic DDIM chain (η), twisted by the tempered one-step reward ψ_k(z) = λ_k r(x̂0(z))/α,
λ_k = min(1, (1 + γ)^k − 1). At step k, with the gradient taken through the network, decoder and guide,
    g = λ_{k+1} ∇_z r(x̂0(z_k))/α,   z' = μ + c² g + c ξ       (μ, c: the stochastic step, `chain.stochastic_step`),
    log w += log N(z'; μ, c²) − log N(z'; μ + c² g, c²) + ψ_{k+1}(z') − ψ_k(z_k),
and an item's particles are resampled (`resampling`, SSP as the authors) whenever their effective sample size
falls below `ess_threshold`·K, every per-particle quantity following its ancestor (the textbook algorithm: the
reference code forgets to re-index the gradient and the previous twist). The last weight uses the final image's
own reward. The result is the particle with the largest weight (`select: weight`, as the authors), the best
ranking value (`select: value`) or the population's medoid (`select: medoid`). A step with c = 0 (the last DDIM
step) takes no gradient: it would not move."""

from __future__ import annotations

import torch

from torch import Tensor

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.das import DasConfig, render_steps
from doodl_ray.methods.base import (Batch, MethodResult, Problem, candidate_seed, images01, medoids, particle_result,
                                   rank_value, rows_render)
from doodl_ray.methods.resampling import ess, resample, tempering
from doodl_ray.sampling.chain import chain_step, stochastic_step
from doodl_ray.sampling.schedule import Schedule


def das_gamma(gamma: float | None, steps: int) -> float:
    """γ as given, or the authors' 0.008 at 100 steps carried to `steps`: λ reaches 1 at 88% of the steps."""
    return gamma if gamma is not None else 2.0 ** (1.0 / (0.88 * steps)) - 1.0


def noise_scales(schedule: Schedule, eta: float) -> list[float]:
    """c of every step's stochastic DDIM step."""
    one = torch.zeros(1, dtype=torch.float64)
    return [stochastic_step(one, one, k, schedule, eta)[1] for k in range(len(schedule))]


def particle_cost(problem: Problem, eta: float, lookahead: int = 1, until: float = 1.0) -> int:
    """UNet evaluations of one twisted particle: at every step the forward passes of its twist's render (the
    first is the step's own), and as many VJPs wherever the step has noise."""
    steps, total = len(problem.schedule), 0
    for k, c in enumerate(noise_scales(problem.schedule, eta)):
        render = render_steps(k, steps, lookahead, until) if c > 0 else 1
        total += render + (render if c > 0 else 0)
    return problem.passes * total


def twist_reward(batch: Batch, z: Tensor, out: Tensor, k: int, schedule: Schedule, lookahead: int,
                 generators: list[torch.Generator]) -> Tensor:
    """The reward −guide loss of the image a particle at step k leads to: its one-step estimate x̂0
    (`lookahead` 1, DAS), or the deterministic render of its remaining chain through `lookahead` of its levels
    (the exact remaining chain once N − k ≤ lookahead); the step's own network output `out` starts it."""
    if lookahead == 1:
        z0 = schedule.x0(z, out, k)
    else:
        render = schedule.lookahead(k, lookahead)
        z0 = float(render.a[0]) * z + float(render.b[0]) * out
        for j in range(1, len(render)):
            z0 = chain_step(z0, j, render, batch.eps)
    return -batch.loss(images01(batch.decode(z0)), generators)


def twisted_values(problem: Problem, rows: list[int], generators: list[torch.Generator], z: Tensor, k: int,
                   lookahead: int, with_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Every particle row's network output at step k, its twist reward (`twist_reward`) and, `with_grad`, the
    reward's gradient in z (zeros without): one forward and backward per `problem.parts` slice, so a step holds
    one slice's graph, not every particle's."""
    outs, rewards, grads = [], [], []
    for part in problem.parts(len(rows)):
        batch = problem.view(rows[part])
        with torch.enable_grad():
            leaf = z[part].detach().requires_grad_(with_grad)
            out = batch.eps(leaf, problem.schedule.timesteps[k])
            reward = twist_reward(batch, leaf, out, k, problem.schedule, lookahead, generators[part])
            grads.append(torch.autograd.grad(reward.sum(), leaf)[0] if with_grad else torch.zeros_like(leaf))
        outs.append(out.detach())
        rewards.append(reward.detach())
    return torch.cat(outs), torch.cat(rewards), torch.cat(grads)


def das(problem: Problem, config: MethodConfig) -> MethodResult:
    return twisted_smc(problem, config, config.das)


def twisted_smc(problem: Problem, config: MethodConfig, dc: DasConfig, lookahead: int = 1,
                until: float = 1.0) -> MethodResult:
    """DAS's sequential Monte Carlo with the twist of `twist_reward`, rendering `lookahead` levels ahead during
    the first `until` of the steps."""
    schedule, n = problem.schedule, len(problem)
    k = dc.count or 4
    if config.budget is not None and dc.count is None:
        k = max(1, config.budget // particle_cost(problem, dc.eta, lookahead, until))
    gamma, alpha = das_gamma(dc.tempering, len(schedule)), dc.kl
    rows = [i for i in range(n) for _ in range(k)]  # item-major
    seeds = [candidate_seed(problem.seeds[i], j) for i in range(n) for j in range(k)]
    step_noise = [torch.Generator().manual_seed(s ^ 0x5DEECE66D) for s in seeds]
    gens = [problem.generators[i] for i in rows]
    scales = noise_scales(schedule, dc.eta)
    z = problem.draw(seeds)
    log_w = torch.zeros(n, k, dtype=torch.float64)
    twist_prev = torch.zeros(len(rows), dtype=torch.float64)
    log_ratio = torch.zeros(len(rows), dtype=torch.float64)  # log p/q of each particle's last move
    history: list[list[float]] = [[] for _ in range(n)]
    for step in range(len(schedule)):
        c = scales[step]
        ahead = render_steps(step, len(schedule), lookahead, until) if c > 0 else 1
        out, reward, grad = twisted_values(problem, rows, gens, z, step, ahead, c > 0)
        reward = reward.to("cpu", torch.float64)
        twist = tempering(step, gamma) * reward / alpha
        log_w += (log_ratio + twist - twist_prev).view(n, k)
        grad = grad * (tempering(step + 1, gamma) / alpha)
        x0, eps = schedule.x0(z, out, step), schedule.noise(z, out, step)
        for i in range(n):
            history[i].append(float(-reward[i * k : (i + 1) * k].max()))
        low = ess(log_w) < dc.ess_threshold * k
        if low.any():
            pick = torch.arange(n * k)
            chosen = resample(log_w[low], dc.resampling, [problem.generators[i] for i in low.nonzero().flatten()])
            for slot, i in enumerate(low.nonzero().flatten().tolist()):
                pick[i * k : (i + 1) * k] = chosen[slot * k : (slot + 1) * k] - slot * k + i * k
            log_w[low] = 0.0
            device_pick = pick.to(z.device)
            x0, eps, grad, twist = x0[device_pick], eps[device_pick], grad[device_pick], twist[pick]
        mean, _ = stochastic_step(x0, eps, step, schedule, dc.eta)
        if c > 0:
            xi = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in step_noise]).to(mean)
            z = mean + c * c * grad + c * xi
            log_ratio = (-0.5 * c * c * grad.pow(2).flatten(1).sum(1) - c * (grad * xi).flatten(1).sum(1)).to(
                "cpu", torch.float64)
        else:
            z, log_ratio = mean, torch.zeros_like(log_ratio)
        twist_prev = twist
    image, score, prior = rows_render(problem, rows, z, dc.select == "value" and bool(config.prior.selection))
    log_w += (log_ratio - score / alpha - twist_prev).view(n, k)
    if dc.select == "weight":
        best = log_w.argmax(dim=1)
    elif dc.select == "medoid":
        best = medoids(image, n)
    else:
        best = rank_value(score, prior, config).view(n, k).argmin(dim=1)
    return particle_result(image, z, score, best, history)
