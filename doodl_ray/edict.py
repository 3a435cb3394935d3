"""EDICT (Wallace et al., CVPR 2023): two coupled DDIM chains with mixing, exactly invertible.

`eps(z, t)` is the (classifier-free guided) noise prediction. With leapfrog, odd steps swap the roles
of the chains: (u, v) = (x, y) on even k, (y, x) on odd k. The inverse uses the *forward* index k."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from doodl_ray.schedule import DDIMSchedule

EpsFn = Callable[[Tensor, int], Tensor]


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


def edict_step(x: Tensor, y: Tensor, k: int, schedule: DDIMSchedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """One generative step: u <- F(u, eps(v)); v <- F(v, eps(u)); mix."""
    t, a, b = schedule.timesteps[k], float(schedule.a[k]), float(schedule.b[k])
    u, v = (y, x) if swapped(k, leapfrog) else (x, y)
    u = a * u + b * eps(v, t)
    v = a * v + b * eps(u, t)
    x, y = (v, u) if swapped(k, leapfrog) else (u, v)
    return mix(x, y, p)


def edict_unstep(x: Tensor, y: Tensor, k: int, schedule: DDIMSchedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """Exact inverse of `edict_step` for the same k: unmix; v <- R(v, eps(u)); u <- R(u, eps(v))."""
    t, a, b = schedule.timesteps[k], float(schedule.a[k]), float(schedule.b[k])
    x, y = unmix(x, y, p)
    u, v = (y, x) if swapped(k, leapfrog) else (x, y)
    v = (v - b * eps(u, t)) / a
    u = (u - b * eps(v, t)) / a
    return ((v, u) if swapped(k, leapfrog) else (u, v))


def edict_sample(x: Tensor, y: Tensor, schedule: DDIMSchedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """Noise (x_T, y_T) -> clean latents (x_0, y_0)."""
    for k in range(len(schedule)):
        x, y = edict_step(x, y, k, schedule, eps, p, leapfrog)
    return x, y


def edict_invert(x: Tensor, y: Tensor, schedule: DDIMSchedule, eps: EpsFn, p: float, leapfrog: bool = True):
    """Clean latents (x_0, y_0) -> the noise (x_T, y_T) that generates them."""
    for k in reversed(range(len(schedule))):
        x, y = edict_unstep(x, y, k, schedule, eps, p, leapfrog)
    return x, y
