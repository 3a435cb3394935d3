"""Sampling schedules: N deterministic steps, each affine in the latents, for noise- and velocity-predicting models.

A step k takes z = α_k x0 + σ_k ε (the model's forward process at the step's timestep) to the next level
z' = α'_k x0 + σ'_k ε by estimating both from one model output f = f(z, t_k):
    x̂0 = (z − σ ε̂)/α,  z' = α' x̂0 + σ' ε̂,
with ε̂ = f for noise prediction (DDIM, η = 0) and, for velocity prediction (rectified flow, α = 1 − σ,
f = v = ε − x0), x̂0 = z − σ v and ε̂ = z + (1 − σ) v. Both give  z' = a_k z + b_k f  with
    DDIM:  a = α'/α,  b = σ' − α'σ/α          (α = √ᾱ_t, σ = √(1 − ᾱ_t))
    flow:  a = 1,     b = σ' − σ              (the Euler step of the flow ODE)
so the EDICT coupling (edict.py) and the gradients through it (gradient.py) serve both families unchanged.
Timesteps and levels come from the model's own scheduler config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from diffusers import DDIMScheduler
from torch import Tensor

Prediction = Literal["epsilon", "velocity"]


@dataclass(frozen=True)
class Schedule:
    """Per-step model timesteps and levels, in sampling order (k = 0 is the noisiest step); float64."""

    timesteps: list[Any]  # what the model is called with at step k
    alpha: Tensor  # [N] signal scale of each step's input
    sigma: Tensor  # [N] noise scale of each step's input
    alpha_next: Tensor  # [N] of each step's output
    sigma_next: Tensor
    prediction: Prediction = "epsilon"

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def a(self) -> Tensor:
        if self.prediction == "velocity":
            return torch.ones_like(self.sigma)
        return self.alpha_next / self.alpha

    @property
    def b(self) -> Tensor:
        if self.prediction == "velocity":
            return self.sigma_next - self.sigma
        return self.sigma_next - self.alpha_next * self.sigma / self.alpha

    def x0(self, z: Tensor, out: Tensor, k: int) -> Tensor:
        """The one-step estimate of the clean latents from a model output at step k."""
        alpha, sigma = float(self.alpha[k]), float(self.sigma[k])
        if self.prediction == "velocity":
            return z - sigma * out
        return (z - sigma * out) / alpha

    def lookahead(self, k: int, steps: int) -> "Schedule":
        """A coarser schedule from step k's level to the end: `steps` of this schedule's levels (at most the N − k
        left, evenly spaced, starting at k), each step jumping to the next chosen level and the last to the final
        one. With every remaining step it is exactly the rest of this schedule."""
        left = len(self) - k
        steps = min(steps, left)
        index = [k + (i * left) // steps for i in range(steps)]
        pick = lambda levels: levels[index]  # noqa: E731
        after = index[1:]
        alpha_next = torch.cat([self.alpha[after], self.alpha_next[-1:]])
        sigma_next = torch.cat([self.sigma[after], self.sigma_next[-1:]])
        return Schedule([self.timesteps[i] for i in index], pick(self.alpha), pick(self.sigma), alpha_next, sigma_next,
                        self.prediction)

    def noise(self, z: Tensor, out: Tensor, k: int) -> Tensor:
        """The one-step estimate of the noise ε from a model output at step k."""
        if self.prediction == "velocity":
            return z + (1 - float(self.sigma[k])) * out
        return out


def ddim_schedule(scheduler_config: Mapping[str, Any], steps: int) -> Schedule:
    """DDIM (η = 0) for a noise-predicting model: timesteps from its own scheduler config (spacing,
    steps_offset, final alpha), as diffusers' DDIMScheduler.step takes them (prev = t − T/N)."""
    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    stride = scheduler.config.num_train_timesteps // steps
    abar = alphas[timesteps]
    abar_next = torch.stack([alphas[t - stride] if t - stride >= 0 else final for t in timesteps])
    return Schedule(timesteps, abar.sqrt(), (1 - abar).sqrt(), abar_next.sqrt(), (1 - abar_next).sqrt())
