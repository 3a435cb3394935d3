"""Search, then refine: sample candidates per item on the standard chain and rank them (guide loss +
prior.selection * prior), then run DOODL from the best candidate with the rest of the budget; an item that
does not meet the stopping rule restarts DOODL from its next-best candidate (`search.starts`). Items whose
search already found a result meeting the rule spend nothing more. Search finds an initial noise in the
right basin cheaply; the gradient then does what search alone cannot at that compute (a rare class)."""

from __future__ import annotations

import torch

from doodl_ray.config import MethodConfig
from doodl_ray.methods.base import MethodResult, Problem, candidate_seed
from doodl_ray.methods.best_of_n import search
from doodl_ray.methods.doodl import optimize


def search_refine(problem: Problem, config: MethodConfig) -> MethodResult:
    s, n = config.search, len(problem)
    count, search_budgets = s.candidates or 8, None
    if config.budget is not None:
        search_budgets = {i: max(1, int(s.fraction * config.budget)) for i in range(n)}
        count = s.candidates or search_budgets[0] // problem.sample_cost() + 1
    best, met, ranked = search(problem, config, count, search_budgets)
    offset = count  # DOODL iterates are numbered after the candidates
    for start in range(s.starts):
        rows = [i for i in range(n) if not met[i] and start < len(ranked[i])]
        if not rows:
            break
        budgets = None
        if config.budget is not None:
            budgets = {i: problem.compute.unet(i) + (config.budget - problem.compute.unet(i)) // (s.starts - start)
                       for i in rows}
            # one gradient step and both evaluations around it: 2 + 4 + 2 single-chain samples
            rows = [i for i in rows if budgets[i] - problem.compute.unet(i) >= 8 * problem.sample_cost()]
            if not rows:
                break
        seeds = [candidate_seed(problem.seeds[i], ranked[i][start][1]) for i in rows]
        run = optimize(problem, config, rows, problem.draw(seeds), best, budgets, index_offset=offset)
        met |= run.met
        offset += run.iterates
    return best.result()
