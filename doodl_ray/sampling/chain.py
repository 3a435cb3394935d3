"""One chain of the same affine steps (schedule.py): plain DDIM for noise-predicting models, the Euler
step of the flow ODE for velocity-predicting ones. The standard sampler: what unguided samples, best-of-N
candidates and one-step guidance use (one model evaluation per step, half of EDICT's two)."""

from __future__ import annotations

import math

from torch import Tensor

from doodl_ray.sampling.edict import EpsFn
from doodl_ray.sampling.schedule import Schedule


def chain_step(z: Tensor, k: int, schedule: Schedule, eps: EpsFn) -> Tensor:
    """z' = a_k z + b_k f(z, t_k)."""
    return float(schedule.a[k]) * z + float(schedule.b[k]) * eps(z, schedule.timesteps[k])


def chain_sample(z: Tensor, schedule: Schedule, eps: EpsFn) -> Tensor:
    """Noise z_T -> clean latents z_0."""
    for k in range(len(schedule)):
        z = chain_step(z, k, schedule, eps)
    return z


def stochastic_step(x0: Tensor, eps: Tensor, k: int, schedule: Schedule, eta: float) -> tuple[Tensor, float]:
    """DDIM with stochasticity η from step k's level to the next, in the schedule's own (α, σ) (for a flow
    model its levels α = 1 − σ): the mean α' x̂0 + √(σ'² − c²) ε̂ and the noise scale
    c = η σ' √(1 − SNR/SNR'), SNR = α²/σ² (DDIM's σ_t; η = 1 is DDPM's posterior variance)."""
    alpha, sigma = float(schedule.alpha[k]), float(schedule.sigma[k])
    alpha_next, sigma_next = float(schedule.alpha_next[k]), float(schedule.sigma_next[k])
    c = 0.0
    if eta and sigma_next > 0 and alpha_next > 0:
        snr_ratio = (alpha / sigma) ** 2 / (alpha_next / sigma_next) ** 2
        c = eta * sigma_next * math.sqrt(max(0.0, 1 - snr_ratio))
    return alpha_next * x0 + math.sqrt(max(0.0, sigma_next**2 - c**2)) * eps, c
