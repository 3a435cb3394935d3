"""Generation methods, one function each over the same arguments (`base.Problem`, `MethodConfig`), by name.

Adding a method is one module with one function and one entry here (and its name in
`config.MethodName`)."""

from __future__ import annotations

from typing import Callable

from doodl_ray.config import MIN_BUDGET_SAMPLES, MethodConfig
from doodl_ray.methods.base import MethodResult, Problem
from doodl_ray.methods.best_of_n import best_of_n
from doodl_ray.methods.das import das
from doodl_ray.methods.doodl import doodl
from doodl_ray.methods.lookahead import lookahead
from doodl_ray.methods.none import none
from doodl_ray.methods.one_step import one_step
from doodl_ray.methods.particles import particles
from doodl_ray.methods.search_refine import search_refine

Method = Callable[[Problem, MethodConfig], MethodResult]

METHODS: dict[str, Method] = {
    "none": none,
    "one-step": one_step,
    "best-of-n": best_of_n,
    "doodl": doodl,
    "search-refine": search_refine,
    "particles": particles,
    "das": das,
    "lookahead": lookahead,
}
GUIDED = tuple(name for name in METHODS if name != "none")


def check_budget(config: MethodConfig, sample_cost: int, prior_cost: int) -> None:
    """A budget below what the method needs to make one image is an error before any work (DOODL also ranks
    its first iterate by the prior when told to)."""
    from doodl_ray.methods.base import ranks_by_prior

    need = MIN_BUDGET_SAMPLES.get(config.name, 1) * sample_cost
    if config.name == "doodl" and ranks_by_prior(config):
        need += prior_cost
    if config.budget is not None and config.budget < need:
        from doodl_ray.errors import InvalidInput

        raise InvalidInput(f"method {config.name} needs a budget of at least {need} UNet evaluations at "
                           f"{config.sampler.steps} steps (got {config.budget})")
