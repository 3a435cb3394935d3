"""The diffusion model's own opinion of a result: its denoising error on the clean latents.

Guidance alone pulls the noise wherever the guide is happiest, which can be off the data (over-optimization).
A diffusion model's training loss, ||eps(sqrt(a) z + sqrt(1 - a) n, t) - n||^2 averaged over noise levels, is
(up to weights and a constant) its ELBO, so it is low where the model finds `z` likely. DOODL uses it as a
loss term and to choose the best iterate. The probe noise `n` is fixed (seeded, shared by every item and
iterate), so two iterates of an item are compared on equal terms and a result does not depend on its batch."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from doodl_ray.edict import EpsFn


class DiffusionPrior:
    """`prior(z0) -> [B]` mean denoising error of clean latents `z0` at fixed noise levels."""

    def __init__(
        self, eps: EpsFn, alphas_cumprod: Tensor, levels: Sequence[float], shape: Sequence[int],
        device: torch.device, dtype: torch.dtype, seed: int = 0,
    ):
        train_steps = len(alphas_cumprod)
        self.eps = eps
        self.timesteps = [min(train_steps - 1, round(level * train_steps)) for level in levels]
        self.abar = [float(alphas_cumprod[t]) for t in self.timesteps]
        generator = torch.Generator().manual_seed(seed)
        self.noise = [torch.randn(tuple(shape), generator=generator).to(device, dtype) for _ in self.timesteps]

    def __call__(self, z0: Tensor) -> Tensor:
        error = torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device)
        for t, abar, noise in zip(self.timesteps, self.abar, self.noise):
            noisy = abar**0.5 * z0 + (1 - abar) ** 0.5 * noise
            error = error + (self.eps(noisy, t) - noise).pow(2).flatten(1).mean(1)
        return error / len(self.timesteps)
