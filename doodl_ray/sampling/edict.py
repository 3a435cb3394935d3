"""EDICT (Wallace et al., CVPR 2023): two coupled chains with mixing, exactly invertible.

Each chain takes the affine step z' = a_k z + b_k f(·, t_k) of `schedule.py` (DDIM for noise-predicting models,
the Euler step of the flow ODE for velocity-predicting ones), but with the model output of the *other* chain:
    u ← a u + b f(v, t);   v ← a v + b f(u, t);   x ← p x + (1 − p) y;   y ← p y + (1 − p) x.
`eps(z, t)` is the (classifier-free guided) model output. With leapfrog, odd steps swap the roles of the
chains: (u, v) = (x, y) on even k, (y, x) on odd k. The inverse undoes the three lines in reverse order
with the same t; its parity comes from the *forward* index k."""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from doodl_ray.sampling.schedule import Schedule

EpsFn = Callable[[Tensor, Any], Tensor]  # (latents, model timestep) -> model output


def swapped(k: int, leapfrog: bool) -> bool:
    """Whether step k updates y first."""
    return leapfrog and k % 2 == 1


def mix(x: Tensor, y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    x = p * x + (1 - p) * y
    y = p * y + (1 - p) * x
    return x, y


def unmix(x: Tensor, y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    y = (y - (1 - p) * x) / p
    x = (x - (1 - p) * y) / p
    return x, y


def edict_step(x: Tensor, y: Tensor, k: int, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """One generative step: u <- F(u, eps(v)); v <- F(v, eps(u)); mix."""
    t, a, b = schedule.timesteps[k], float(schedule.a[k]), float(schedule.b[k])
    u, v = (y, x) if swapped(k, leapfrog) else (x, y)
    u = a * u + b * eps(v, t)
    v = a * v + b * eps(u, t)
    x, y = (v, u) if swapped(k, leapfrog) else (u, v)
    return mix(x, y, p)


def edict_unstep(x: Tensor, y: Tensor, k: int, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """Exact inverse of `edict_step` for the same k: unmix; v <- R(v, eps(u)); u <- R(u, eps(v))."""
    t, a, b = schedule.timesteps[k], float(schedule.a[k]), float(schedule.b[k])
    x, y = unmix(x, y, p)
    u, v = (y, x) if swapped(k, leapfrog) else (x, y)
    v = (v - b * eps(u, t)) / a
    u = (u - b * eps(v, t)) / a
    return ((v, u) if swapped(k, leapfrog) else (u, v))


def edict_sample(x: Tensor, y: Tensor, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """Noise (x_T, y_T) -> clean latents (x_0, y_0)."""
    for k in range(len(schedule)):
        x, y = edict_step(x, y, k, schedule, eps, p, leapfrog)
    return x, y


def edict_invert(x: Tensor, y: Tensor, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """Clean latents (x_0, y_0) -> the noise (x_T, y_T) that generates them."""
    for k in reversed(range(len(schedule))):
        x, y = edict_unstep(x, y, k, schedule, eps, p, leapfrog)
    return x, y
