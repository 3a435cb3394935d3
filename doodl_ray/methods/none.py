"""No guidance: one sample of the standard single chain from each item's own noise."""

from __future__ import annotations

import torch

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.base import MethodResult, Problem, images01
from doodl_ray.sampling.chain import chain_sample


@torch.no_grad()
def none(problem: Problem, config: MethodConfig) -> MethodResult:
    batch = problem.view()
    image = images01(batch.decode(chain_sample(problem.noise, problem.schedule, batch.eps)))
    history = [[float("nan")] for _ in range(len(problem))]
    return MethodResult(image, problem.noise, history, [0] * len(problem), first_image=image)
