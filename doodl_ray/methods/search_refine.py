"""Search, then refine: sample candidates per item on the standard chain (pruned by successive halving on their
one-step estimates, `pruned_search.py`, or in full) and rank them (guide loss + prior.selection * prior), then run DOODL from the best candidate with the rest of the budget; an item that
does not meet the stopping rule restarts DOODL from its next-best candidate (`search.starts`). Items whose
search already found a result meeting the rule spend nothing more. Search finds an initial noise in the
right basin cheaply; the gradient then does what search alone cannot at that compute (a rare class)."""

from __future__ import annotations

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.base import MethodResult, Problem, candidate_seed
from doodl_ray.methods.best_of_n import search
from doodl_ray.methods.doodl import optimize
from doodl_ray.methods.pruned_search import pruned_search

REFINE_MIN = 8  # single-chain samples in one useful DOODL start: a gradient step and the evaluations around it


def search_refine(problem: Problem, config: MethodConfig) -> MethodResult:
    s, n = config.search, len(problem)
    share = None
    if config.budget is not None:
        share = int(s.fraction * config.budget)
        if config.budget - share < REFINE_MIN * problem.sample_cost():
            share = config.budget  # too little left to refine: the whole budget goes to the search
    if s.prune:
        best, met, ranked = pruned_search(problem, config, share)
    else:
        count = s.candidates or (8 if share is None else share // problem.sample_cost() + 1)
        best, met, ranked = search(problem, config, count, share)
    offset = max(j for r in ranked for _, j in r) + 1  # DOODL iterates are numbered after the candidates
    for start in range(s.starts):
        rows = [i for i in range(n) if not met[i] and start < len(ranked[i])]
        if not rows:
            break
        budgets, least = None, REFINE_MIN * problem.sample_cost()
        if config.budget is not None:  # the rest shared by the starts still to come, each at least `least`
            left = {i: config.budget - problem.compute.unet(i) for i in rows}
            rows = [i for i in rows if left[i] >= least]
            budgets = {i: problem.compute.unet(i) + min(left[i], max(left[i] // (s.starts - start), least))
                       for i in rows}
            if not rows:
                break
        seeds = [candidate_seed(problem.seeds[i], ranked[i][start][1]) for i in rows]
        run = optimize(problem, config, rows, problem.draw(seeds), best, budgets, index_offset=offset)
        met |= run.met
        offset += run.iterates
    return best.result()
