"""Rectified-flow models (SD 3.x, FLUX.1): their sampling schedule and training loss, for the same coupled,
exactly invertible sampler EDICT gives DDIM.

A flow model predicts a velocity v(z, σ) ≈ n − z0 along the straight path z_σ = (1 − σ) z0 + σ n, and samples
from σ_0 = 1 (noise) to σ_N = 0 with Euler steps of the ODE dz/dσ = v:
    z_{k+1} = z_k + h_k v(z_k, σ_k),   h_k = σ_{k+1} − σ_k < 0.
That is the affine step z' = a z + b f of `schedule.py` with a = 1, b = h_k (α = 1 − σ), so `edict.py`'s
coupling applies unchanged with ε̃ replaced by the (classifier-free guided, or guidance-embedded) velocity.
Two chains x, y start equal; at step k, with (u, v) = (x, y) on even k and (y, x) on odd k (leapfrog):
    u ← u + h_k v(v, σ_k);   v ← v + h_k v(u, σ_k);   x ← p x + (1 − p) y;   y ← p y + (1 − p) x.
Each chain takes an Euler step with the velocity of the other chain (the second with the one just updated),
then the chains are mixed. Its exact inverse undoes the three lines in reverse order at the same σ_k:
    y ← (y − (1 − p) x)/p;  x ← (x − (1 − p) y)/p;   v ← v − h_k v(u, σ_k);   u ← u − h_k v(v, σ_k),
with the parity of k taken from the *forward* index, so every velocity is re-evaluated at exactly the point
it was evaluated at going forward: inversion is exact up to rounding. With a = 1 nothing is divided by the
step, only by p when unmixing; gradients (`gradient.py`, checkpoint and reversible) carry over as they are.

The levels are the model's own: its FlowMatchEulerDiscreteScheduler config gives the σ grid (`shift`,
or FLUX's resolution-dependent dynamic shift μ from the number of image tokens, computed the way diffusers'
pipelines do), and the network is called at the scheduler's timesteps t_k = σ_k · T (T training steps; the
adapter rescales for networks that take σ itself). The training loss at level σ with noise n is
‖v((1 − σ) z0 + σ n, σ) − (n − z0)‖², the flow analogue of the DDPM denoising error (`methods/prior.py`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from doodl_ray.sampling.schedule import Schedule

FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def is_flow(scheduler_config: Mapping[str, Any]) -> bool:
    """Whether a scheduler config belongs to a rectified-flow (velocity-predicting) model."""
    return scheduler_config.get("_class_name") == FLOW_SCHEDULER


def dynamic_shift(scheduler_config: Mapping[str, Any], image_seq_len: int) -> float:
    """μ for `use_dynamic_shifting`: linear in the number of image tokens between (base_image_seq_len,
    base_shift) and (max_image_seq_len, max_shift), diffusers' `calculate_shift`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config)).config  # fills the defaults
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return image_seq_len * slope + config.base_shift - slope * config.base_image_seq_len


def flow_schedule(
    scheduler_config: Mapping[str, Any], steps: int, image_seq_len: int | None = None,
    sigmas: Sequence[float] | None = None,
) -> Schedule:
    """Euler steps of the flow ODE at the levels the model's own scheduler sets: `set_timesteps(steps)` with
    its shift, or with μ from `image_seq_len` when the config shifts dynamically. `sigmas` is a pipeline's own
    unshifted grid where it passes one (FLUX: linspace(1, 1/N, N)). σ_N = 0 ends the last step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    if scheduler.config.invert_sigmas:
        raise ValueError("flow schedulers with invert_sigmas (time running from data to noise) are not supported")
    mu = None
    if scheduler.config.use_dynamic_shifting:
        if image_seq_len is None:
            raise ValueError("this scheduler shifts by resolution (use_dynamic_shifting): image_seq_len is needed")
        mu = dynamic_shift(scheduler_config, image_seq_len)
    scheduler.set_timesteps(steps, sigmas=None if sigmas is None else list(sigmas), mu=mu)
    level = scheduler.sigmas.to(torch.float64)
    if len(level) != steps + 1:
        raise ValueError(f"the scheduler gave {len(level) - 1} steps for {steps}")
    sigma, sigma_next = level[:-1], level[1:]
    timesteps = [float(t) for t in scheduler.timesteps]
    return Schedule(timesteps, 1 - sigma, sigma, 1 - sigma_next, sigma_next, prediction="velocity")


def flow_training_pair(z0: Tensor, noise: Tensor, level: float, train_steps: int) -> tuple[Tensor, float, Tensor]:
    """(z_σ, model timestep σ·T, velocity target n − z0) at σ = level: the flow-matching training pair."""
    return (1 - level) * z0 + level * noise, level * train_steps, noise - z0
