"""DDIM (eta = 0) coefficients for N sampling steps, from any diffusers DDIM-family scheduler config.

Step k goes from timestep t to t' = t - T/N:  z' = a_t z + b_t eps  with
a_t = sqrt(abar_t' / abar_t),  b_t = sqrt(1 - abar_t') - sqrt(abar_t' (1 - abar_t) / abar_t)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers import DDIMScheduler
from torch import Tensor


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step timesteps and coefficients, in sampling order (k = 0 is the noisiest step); float64."""

    timesteps: list[int]
    alpha_bar: Tensor
    alpha_bar_prev: Tensor

    @property
    def a(self) -> Tensor:
        return (self.alpha_bar_prev / self.alpha_bar).sqrt()

    @property
    def b(self) -> Tensor:
        return (1 - self.alpha_bar_prev).sqrt() - (self.alpha_bar_prev * (1 - self.alpha_bar) / self.alpha_bar).sqrt()

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_schedule(scheduler_config: Mapping[str, Any], steps: int) -> DDIMSchedule:
    """Timesteps come from the model's own scheduler config (spacing, steps_offset, final alpha)."""
    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    stride = scheduler.config.num_train_timesteps // steps
    prev = [alphas[t - stride] if t - stride >= 0 else final for t in timesteps]
    return DDIMSchedule(timesteps, alphas[timesteps], torch.stack(prev))
