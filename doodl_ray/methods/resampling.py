"""Resampling for sequential Monte Carlo: each item's particles drawn again in proportion to their weights.

Schemes (Gerber, Chopin & Whiteley 2019; the `particles` library's, which DAS ships):
- `multinomial`: K independent draws (the FK-steering reference);
- `stratified`: one uniform in each of the K strata [j/K, (j+1)/K);
- `systematic`: one uniform U, points (U + j)/K (lowest variance in practice; the classical-search study's pick);
- `ssp`: the Srinivasan sampling process: each particle gets ⌊K W⌋ or ⌊K W⌋ + 1 children (DAS's default).
Every draw comes from the item's own generator, so an item's particles do not depend on its batch."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

Scheme = Literal["multinomial", "stratified", "systematic", "ssp"]


def tempering(k: int, gamma: float | None) -> float:
    """DAS's exponential tempering: the share min(1, (1 + γ)^k − 1) of the reward at step k (0 at the first
    step, 1 from about k = ln 2 / ln(1 + γ) on); 1 at every step without γ."""
    return 1.0 if gamma is None else min(1.0, (1.0 + gamma) ** k - 1.0)


def ess(log_w: Tensor) -> Tensor:
    """Effective sample size of each row of log weights [n, K]: 1 / Σ W²."""
    return 1.0 / torch.softmax(log_w, dim=-1).pow(2).sum(-1)


def resample(log_w: Tensor, scheme: Scheme, generators: Sequence[torch.Generator]) -> Tensor:
    """Flat indices (item-major, into n·K particles) of each item's K resampled particles."""
    n, k = log_w.shape
    picks = []
    for i in range(n):
        weights = torch.softmax(log_w[i].to(torch.float64) - log_w[i].max(), dim=0)
        picks.append(i * k + _ancestors(weights, k, scheme, generators[i]))
    return torch.cat(picks)


def _ancestors(weights: Tensor, k: int, scheme: Scheme, generator: torch.Generator) -> Tensor:
    if scheme == "multinomial":
        return torch.multinomial(weights, k, replacement=True, generator=generator)
    if scheme == "ssp":
        return _ssp(weights, k, generator)
    if scheme == "systematic":
        u = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(k, dtype=torch.float64)) / k
    else:
        u = (torch.rand(k, generator=generator, dtype=torch.float64) + torch.arange(k, dtype=torch.float64)) / k
    return torch.searchsorted(torch.cumsum(weights, 0), u).clamp_(max=k - 1)


def _ssp(weights: Tensor, m: int, generator: torch.Generator) -> Tensor:
    """The Srinivasan sampling process as the `particles` library (and DAS) write it: fractional parts paired
    off two at a time, so every count is ⌊m W⌋ or ⌊m W⌋ + 1."""
    n = weights.shape[0]
    if n == 1:
        return torch.zeros(m, dtype=torch.long)
    mw = (m * weights).tolist()
    children = [int(x // 1) for x in mw]
    xi = [x - c for x, c in zip(mw, children)]
    u = torch.rand(max(n - 1, 0), generator=generator, dtype=torch.float64).tolist()
    i, j, k = 0, 1, 0
    for k in range(n - 1):
        delta_i, delta_j = min(xi[j], 1.0 - xi[i]), min(xi[i], 1.0 - xi[j])
        total = delta_i + delta_j
        if u[k] < (delta_i / total if total > 0 else 0.0):  # swap so that i is always the one increased
            i, j, delta_i = j, i, delta_j
        if xi[j] < 1.0 - xi[i]:
            xi[i] += delta_i
            j = k + 2
        else:
            xi[j] -= delta_i
            children[i] += 1
            i = k + 2
    if sum(children) == m - 1:  # round-off may lose one particle
        last = i if j == k + 2 else j
        if xi[last] > 0.99:
            children[last] += 1
    if sum(children) != m:
        raise ValueError("ssp resampling: wrong number of children")
    return torch.arange(n).repeat_interleave(torch.tensor(children))
