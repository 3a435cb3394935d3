"""One chain of the same affine steps (schedule.py): plain DDIM for noise-predicting models, the Euler
step of the flow ODE for velocity-predicting ones. The standard sampler: what unguided samples, best-of-N
candidates and one-step guidance use (one model evaluation per step, half of EDICT's two)."""

from __future__ import annotations

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
