"""The diffusion model's own opinion of a result: its training loss on the clean latents.

Guidance alone pulls the noise wherever the guide is happiest, which can be off the data (over-optimization).
A diffusion model's training loss, averaged over noise levels, is (up to weights and a constant) its ELBO, so
it is low where the model finds `z0` likely: ||eps(sqrt(a) z0 + sqrt(1 - a) n, t) - n||^2 for noise-predicting
models, ||v((1 - s) z0 + s n, s) - (n - z0)||^2 for flow models (the model adapter's `training_pair`). DOODL
uses it as a loss term and to choose the best iterate; search ranks candidates by it. The probe noise `n` is
fixed (seeded, shared by every item and iterate), so two iterates of an item are compared on equal terms and
a result does not depend on its batch."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from doodl_ray.sampling.edict import EpsFn

TrainingPair = Callable[[Tensor, Tensor, float], tuple[Tensor, Any, Tensor]]  # (z0, noise, level) -> (z_t, t, target)


class DiffusionPrior:
    """`prior(z0) -> [B]` mean training loss of clean latents `z0` at fixed noise levels."""

    def __init__(
        self, eps: EpsFn, training_pair: TrainingPair, levels: Sequence[float], shape: Sequence[int],
        device: torch.device, dtype: torch.dtype, seed: int = 0,
    ):
        self.eps, self.training_pair, self.levels = eps, training_pair, list(levels)
        generator = torch.Generator().manual_seed(seed)
        self.noise = [torch.randn(tuple(shape), generator=generator).to(device, dtype) for _ in self.levels]

    def __call__(self, z0: Tensor) -> Tensor:
        error = torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device)
        for level, noise in zip(self.levels, self.noise):
            noisy, t, target = self.training_pair(z0, noise.expand_as(z0), level)
            error = error + (self.eps(noisy, t) - target).pow(2).flatten(1).mean(1)
        return error / len(self.levels)
