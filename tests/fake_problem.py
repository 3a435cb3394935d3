"""A small fake `Problem` with closed forms instead of networks, for method unit tests that need no model files:
the data are N(mu, s^2 I) in a 2x4x4 "image", whose exact noise prediction is known,

    eps*(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar),

the decoder is the identity (images in [-1, 1] map to [0, 1]) and the guide's loss is the squared distance of
the image's first channel to a target level per item. Every call is counted as the engine counts it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler

from doodl_ray.methods.base import Batch, Compute, Problem, counted
from doodl_ray.sampling.schedule import ddim_schedule

SHAPE = (2, 4, 4)
MU, S = 0.1, 0.5
CONFIG = dict(DDIMScheduler().config)
ALPHAS_CUMPROD = DDIMScheduler.from_config(CONFIG).alphas_cumprod


def gaussian_eps(z: torch.Tensor, t) -> torch.Tensor:
    abar = ALPHAS_CUMPROD.to(z.dtype)[int(t)]
    return (1 - abar).sqrt() * (z - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)


def guide_loss(images01: torch.Tensor, targets: Sequence[float]) -> torch.Tensor:
    """Squared distance of each image's first channel to its item's target level in [0, 1]."""
    goal = torch.tensor(targets, dtype=images01.dtype).view(-1, 1, 1)
    return (images01[:, 0] - goal).pow(2).flatten(1).mean(1) * 100


def gaussian_problem(seeds: Sequence[int], targets: Sequence[float], steps: int = 30) -> Problem:
    compute = Compute(len(seeds))

    def draw(candidate_seeds: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(s)))
                            for s in candidate_seeds])

    def make_batch(rows: tuple[int, ...]) -> Batch:
        chosen = [targets[r] for r in rows]
        loss = counted(lambda images, gens: guide_loss(images, chosen), compute, rows, "guide")
        return Batch(list(rows), counted(gaussian_eps, compute, rows, "unet"), counted(lambda z: z, compute, rows, "decode"),
                     loss, None)

    return Problem(draw(seeds), list(seeds), ddim_schedule(CONFIG, steps), [torch.Generator().manual_seed(s) for s in seeds],
                   compute, 1, make_batch, draw, lambda n: ddim_schedule(CONFIG, n))
