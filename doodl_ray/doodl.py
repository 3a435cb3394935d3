"""DOODL: optimize the initial noise so the guidance likes the true generated image.

Each iteration runs the whole EDICT chain, scores the decoded image (unaugmented, for the history and
best-iterate choice), back-propagates the augmented loss through the sampler (`gradient.py`), and
updates the noise; the noise is renormalized to its initial norm so it stays on the typical-noise shell.
An optional diffusion prior (`prior.py`) joins the optimized loss and/or the best-iterate choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from doodl_ray.config import DoodlConfig
from doodl_ray.edict import EpsFn, edict_sample
from doodl_ray.errors import NonFiniteLoss
from doodl_ray.gradient import ChainLoss, chain_gradient
from doodl_ray.schedule import DDIMSchedule

Score = Callable[[Tensor], Tensor]  # images in [0, 1] -> per-item loss, no augmentation


@dataclass
class DoodlResult:
    image: Tensor  # best iterate per item, [B, C, H, W] in [0, 1]
    first_image: Tensor  # iterate 0: the unguided sample from the initial noise
    noise: Tensor  # the initial latents that generate it
    history: Tensor  # [iterations + 1, B] unaugmented loss per iterate (row 0: the unguided sample)
    best_iteration: Tensor  # [B]


class NoiseUpdate:
    """The step on z_T: the reference's clipped heavy-ball step with noise, a normalized step, or Adam."""

    def __init__(self, z: Tensor, config: DoodlConfig, generators: Sequence[torch.Generator]):
        self.config, self.generators = config, generators
        self.buffer = torch.zeros_like(z)
        self.adam = None
        if config.optimizer == "adam":
            self.param = torch.nn.Parameter(z.clone())
            self.adam = torch.optim.Adam([self.param], lr=config.lr)

    def __call__(self, z: Tensor, grad: Tensor) -> Tensor:
        c = self.config
        if c.optimizer == "reference":
            step = (-c.grad_scale * grad).clamp(-c.clip, c.clip)
            self.buffer = c.momentum * self.buffer + step
            return z + self.buffer + c.noise * _per_item_randn(z, self.generators)
        if c.optimizer == "normalized":
            return z - c.lr * unit_rms(grad)
        self.param.data.copy_(z)
        self.param.grad = grad.to(self.param.dtype)
        self.adam.step()
        return self.param.detach().clone()


def doodl(
    noise: Tensor, schedule: DDIMSchedule, eps: EpsFn, chain_loss: ChainLoss, score: Score,
    decode: Callable[[Tensor], Tensor], config: DoodlConfig, generators: Sequence[torch.Generator],
    p: float, leapfrog: bool = True, prior: Callable[[Tensor], Tensor] | None = None,
) -> DoodlResult:
    """Run `config.iterations` updates from `noise` and return each item's best iterate: the lowest
    guidance loss, plus `config.prior_selection` times the prior where one is given."""
    if prior is None and (config.prior_weight or config.prior_selection):
        raise ValueError("prior_weight / prior_selection need a diffusion prior")
    if config.prior_weight:
        chain_loss = with_prior(chain_loss, prior, config.prior_weight)
    z = noise.clone()
    norm0 = _norms(z)
    update = NoiseUpdate(z, config, generators)
    history, first_image = [], None
    best_value = torch.full((z.shape[0],), float("inf"), dtype=torch.float64)  # on the CPU, like the scores
    best_image, best_noise = None, z.clone()
    best_iteration = torch.zeros(z.shape[0], dtype=torch.long)
    for m in range(config.iterations + 1):
        if m < config.iterations:
            step = chain_gradient(z, schedule, eps, chain_loss, p, leapfrog, config.gradient)
            image, grad, x0 = step.image, step.grad, step.x0
        else:
            with torch.no_grad():
                x0, _ = edict_sample(z, z, schedule, eps, p, leapfrog)
                image = images01(decode(x0))
        with torch.no_grad():
            loss = score(image).to("cpu", torch.float64)
            selection = loss
            if config.prior_selection:
                selection = loss + config.prior_selection * prior(x0).to("cpu", torch.float64)
        if not torch.isfinite(loss).all() or (m < config.iterations and not torch.isfinite(grad).all()):
            bad = [i for i in range(len(loss)) if not torch.isfinite(loss[i])]
            raise NonFiniteLoss(f"non-finite guidance loss or gradient at iteration {m} (items {bad or 'all'})")
        first_image = image if first_image is None else first_image
        history.append(loss)
        better = selection < best_value
        best_value = torch.where(better, selection, best_value)
        best_image = image.clone() if best_image is None else torch.where(_expand(better, image), image, best_image)
        best_noise = torch.where(_expand(better, z), z, best_noise)
        best_iteration[better] = m
        if m < config.iterations:
            z = update(z, grad)
            z = z * (norm0 / _norms(z))
    return DoodlResult(best_image, first_image, best_noise, torch.stack(history), best_iteration)


def with_prior(chain_loss: ChainLoss, prior: Callable[[Tensor], Tensor], weight: float) -> ChainLoss:
    """The chain loss plus `weight` times the prior of the final latents (its gradient goes through the sampler)."""
    def loss_with_prior(z0: Tensor) -> tuple[Tensor, Tensor]:
        loss, image = chain_loss(z0)
        return loss + weight * prior(z0).to(loss.dtype), image

    return loss_with_prior


def images01(decoded: Tensor) -> Tensor:
    """Decoder output in [-1, 1] -> image in [0, 1]."""
    return ((decoded + 1) / 2).clamp(0, 1)


def unit_rms(t: Tensor) -> Tensor:
    """Each item scaled to unit root-mean-square, so a step size means the same at every noise level."""
    return t / t.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30).view(-1, *[1] * (t.ndim - 1))


def _norms(z: Tensor) -> Tensor:
    return z.flatten(1).norm(dim=1).view(-1, *[1] * (z.ndim - 1))


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(like.device).view(-1, *[1] * (like.ndim - 1))


def _per_item_randn(like: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Noise drawn from each item's own generator on the CPU, so results do not depend on the batch or device."""
    return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators]).to(like)
