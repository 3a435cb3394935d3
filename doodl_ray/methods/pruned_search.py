"""Pruned search: successive halving over deterministic single-chain trajectories.

Many candidate noises per item start down the standard chain together; at 1/6, 1/3 and 2/3 of the steps
each survivor's one-step estimate x̂0 (schedule.x0) is decoded and scored by the guide, and each item keeps
its better half. A candidate's fate is mostly decided early (the coarse layout), so at a given budget this
looks at about 2.7x as many candidates as best-of-N, and, unlike particle resampling, every survivor is
still one deterministic noise: DOODL can refine it (search-refine). Survivors are ranked at the end by
guide loss + prior.selection * prior of their finished samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.base import Problem, candidate_seed, rank_value, ranks_by_prior, rows_render, rows_score
from doodl_ray.methods.best_of_n import Best, empty_best

FRACTIONS = (1 / 6, 1 / 3, 2 / 3)  # where survivors are scored, as fractions of the steps
CHUNK = 64  # rows per network call unless the problem's micro_batch says otherwise


def checkpoints(steps: int) -> list[int]:
    """Steps after which survivors are pruned, then the end."""
    return sorted({max(1, round(f * steps)) for f in FRACTIONS} - {steps}) + [steps]


def survivors(count: int, rounds: int) -> list[int]:
    """Candidates alive in each segment between checkpoints: halved (rounding up) at each pruning."""
    alive = [count]
    for _ in range(rounds - 1):
        alive.append(math.ceil(alive[-1] / 2))
    return alive


def pruned_cost(count: int, steps: int, passes: int, final_extra: int = 0) -> int:
    """UNet evaluations per item of a pruned search over `count` candidates."""
    marks = checkpoints(steps)
    alive = survivors(count, len(marks))
    spans = [b - a for a, b in zip([0] + marks[:-1], marks)]
    return sum(n * span for n, span in zip(alive, spans)) * passes + alive[-1] * final_extra


def affordable(budget: int, steps: int, passes: int, final_extra: int = 0) -> int:
    """The most candidates a pruned search can afford within `budget` (at least 1)."""
    count = 1
    while pruned_cost(count + 1, steps, passes, final_extra) <= budget:
        count += 1
    return count


@torch.no_grad()
def pruned_search(problem: Problem, config: MethodConfig, budget: int | None) -> tuple[Best, Tensor, list]:
    """Search by successive halving: `search.candidates` per item, or as many as `budget` affords. Returns,
    like `best_of_n.search`, the best per item, which items met the stopping rule, and every item's sorted
    (value, candidate) list."""
    n, schedule = len(problem), problem.schedule
    prior_cost = problem.prior_cost(len(config.prior.levels))
    rank_prior = ranks_by_prior(config) and (budget is None or budget >= problem.sample_cost() + prior_cost)
    count = config.search.candidates or 8
    if budget is not None:
        count = affordable(budget, len(schedule), problem.passes, prior_cost if rank_prior else 0)
    rows = [(i, j) for i in range(n) for j in range(count)]  # (item, candidate)
    z = problem.draw([candidate_seed(problem.seeds[i], j) for i, j in rows])
    start, marks = 0, checkpoints(len(schedule))
    for mark in marks:
        x0 = torch.empty_like(z)
        for part in problem.parts(len(rows), CHUNK):
            batch = problem.view([i for i, _ in rows[part]])
            for k in range(start, mark):
                out = batch.eps(z[part], schedule.timesteps[k])
                if k == mark - 1 and mark < len(schedule):
                    x0[part] = schedule.x0(z[part], out, k)
                z[part] = float(schedule.a[k]) * z[part] + float(schedule.b[k]) * out
        start = mark
        if mark == len(schedule):
            break
        keep = _better_half(rows, rows_score(problem, [i for i, _ in rows], x0, CHUNK))
        rows, z = [rows[r] for r in keep], z[torch.tensor(keep).to(z.device)]
    items = [i for i, _ in rows]
    image, score, prior = rows_render(problem, items, z, rank_prior, CHUNK)
    value = rank_value(score, prior, config)
    best = empty_best(problem, image)
    noise = problem.draw([candidate_seed(problem.seeds[i], j) for i, j in rows])
    ranked: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for r, (i, j) in enumerate(rows):  # one row at a time: an item may have several survivors
        best.update([i], j, image[r : r + 1], noise[r : r + 1], value[r : r + 1], score[r : r + 1])
        ranked[i].append((float(value[r]), j))
    met = torch.zeros(n, dtype=torch.bool)
    met[torch.tensor(items)[problem.stopped(score, prior)]] = True
    return best, met, [sorted(r) for r in ranked]


def _better_half(rows: list[tuple[int, int]], score: Tensor) -> list[int]:
    """Positions of each item's better half (rounding up) by score, in their original order."""
    by_item: dict[int, list[int]] = {}
    for r, (i, _) in enumerate(rows):
        by_item.setdefault(i, []).append(r)
    keep = []
    for positions in by_item.values():
        order = sorted(positions, key=lambda r: (float(score[r]), r))
        keep += order[: math.ceil(len(positions) / 2)]
    return sorted(keep)
