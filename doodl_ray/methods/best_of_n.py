"""Best-of-N: sample N unguided candidates per item on the standard single chain and keep the one the guide
likes best (guide loss + prior.selection * prior): noise *search* at matched compute (Ma et al. 2025).
Candidate 0 is the item's own noise; an item whose candidate meets the stopping rule draws no more."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.base import MethodResult, Problem, candidate_seed, images01, rank_value, ranks_by_prior
from doodl_ray.sampling.chain import chain_sample


@dataclass
class Best:
    """Each item's best result so far, by a ranking value (lower is better), and the trace of values."""

    image: Tensor
    noise: Tensor
    value: Tensor  # [B] float64 on the CPU
    index: list[int]
    history: list[list[float]]
    first_image: Tensor | None = None

    def update(self, rows: list[int], index: int | list[int], image: Tensor, noise: Tensor, value: Tensor,
               score: Tensor | None = None) -> None:
        """Offer results for `rows` (item indices); `score` (default `value`) goes into the history."""
        indices = index if isinstance(index, list) else [index] * len(rows)
        for r, row in enumerate(rows):
            self.history[row].append(float((value if score is None else score)[r]))
        position = torch.tensor(rows, dtype=torch.long)
        better = value < self.value[position]
        if not better.any():
            return
        take = position[better]
        self.value[take] = value[better]
        self.image[take.to(self.image.device)] = image[better.to(image.device)]
        self.noise[take.to(self.noise.device)] = noise[better.to(noise.device)]
        for r in torch.nonzero(better).flatten().tolist():
            self.index[rows[r]] = indices[r]

    def result(self) -> MethodResult:
        return MethodResult(self.image, self.noise, self.history, self.index, self.first_image)


def empty_best(problem: Problem, image_like: Tensor) -> Best:
    n = len(problem)
    return Best(torch.zeros((n, *image_like.shape[1:]), dtype=image_like.dtype, device=image_like.device),
                problem.noise.clone(), torch.full((n,), float("inf"), dtype=torch.float64), [0] * n,
                [[] for _ in range(n)])


def keep_best(best: Best | None, j: int, image: Tensor, noise: Tensor, score: Tensor) -> Best:
    """Fold candidate j of every item (ranked by `score`) into `best`."""
    if best is None:
        return Best(image.clone(), noise.clone(), score.clone(), [j] * image.shape[0], [[float(v)] for v in score])
    best.update(list(range(image.shape[0])), j, image, noise, score)
    return best


@torch.no_grad()
def search(problem: Problem, config: MethodConfig, count: int, budget: int | None = None
           ) -> tuple[Best, Tensor, list]:
    """Sample up to `count` candidates for each item: fewer once one meets the stopping rule or the next would
    exceed the budget (an item always gets its first). Ranked by guide loss + prior.selection * prior (when
    the budget affords the prior). Returns the best per item, which items met the rule, and every item's
    sorted (value, candidate) list."""
    prior_cost = problem.prior_cost(len(config.prior.levels))
    rank_prior = ranks_by_prior(config) and (budget is None or budget >= problem.sample_cost() + prior_cost)
    cost = problem.sample_cost() + (prior_cost if rank_prior else 0)
    active, best, met = list(range(len(problem))), None, torch.zeros(len(problem), dtype=torch.bool)
    ranked: list[list[tuple[float, int]]] = [[] for _ in range(len(problem))]
    for j in range(count):
        if budget is not None and j > 0:
            active = [i for i in active if problem.compute.unet(i) + cost <= budget]
        if not active:
            break
        batch = problem.view(active)
        noise = problem.draw([candidate_seed(problem.seeds[i], j) for i in active])
        z0 = chain_sample(noise, problem.schedule, batch.eps)
        image = images01(batch.decode(z0))
        score = batch.score(image)
        prior = batch.prior_cpu(z0) if rank_prior else None
        value = rank_value(score, prior, config)
        if best is None:
            best = empty_best(problem, image)
            best.first_image = image.clone()
        best.update(active, j, image, noise, value, score)
        for r, i in enumerate(active):
            ranked[i].append((float(value[r]), j))
        done = problem.stopped(score, prior)
        met[torch.tensor(active)[done]] = True
        active = [i for i, d in zip(active, done.tolist()) if not d]
    return best, met, [sorted(r) for r in ranked]


def best_of_n(problem: Problem, config: MethodConfig) -> MethodResult:
    count = config.candidates or 8
    if config.budget is not None:
        count = config.budget // problem.sample_cost() + 1
    return search(problem, config, count, config.budget)[0].result()
