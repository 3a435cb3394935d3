"""DAS's settings (method `das`, implemented in methods/das.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from doodl_ray.config import StrictModel
from doodl_ray.methods.registry import MethodConfig, MethodPlugin, register_method
from doodl_ray.methods.specs.particles import Resampling


class DasConfig(StrictModel):
    """das: sequential Monte Carlo with proposals twisted by the one-step gradient of the tempered reward and
    importance weights that correct them (Kim et al. 2025, `krafton-ai/DAS`)."""

    count: int | None = Field(None, ge=1, description="Particles per item; default: from the budget (4 without one).")
    kl: float = Field(1.0, gt=0, description="alpha: the target is p(x) exp(reward / alpha), reward = -guide loss.")
    tempering: float | None = Field(
        None, gt=0, description="gamma: lambda_k = min(1, (1 + gamma)^k - 1). None: the authors' 0.008 at 100 steps "
        "carried to the step count (lambda reaches 1 at 88% of the steps).",
    )
    eta: float = Field(1.0, ge=0, le=1, description="DDIM stochasticity of the proposals (the authors: 1).")
    ess_threshold: float = Field(0.5, ge=0, le=1, description="Resample an item when its ESS falls below this * K.")
    resampling: Resampling = Field("ssp", description="The resampling scheme (the authors: ssp).")
    select: Literal["weight", "value", "medoid"] = Field(
        "weight", description="weight: the particle with the largest importance weight (the authors); value: the best "
        "guide loss + prior.selection * prior; medoid: the particle nearest the item's others (least summed pixel "
        "distance), the population's consensus rather than its most tilted member.",
    )


def render_steps(k: int, steps: int, lookahead: int, until: float) -> int:
    """Network calls of a twisted particle's render at step k: `lookahead` levels (at most those left) during the
    first `until` of the steps, the one-step estimate's single call after."""
    return min(lookahead, steps - k) if k < until * steps else 1


def particle_evaluations(steps: int, lookahead: int = 1, until: float = 1.0) -> int:
    """Network evaluations of one twisted particle at eta > 0: each step the forwards of its twist's render and as
    many VJPs, but the last step (no noise, no gradient): a forward."""
    return sum(2 * render_steps(k, steps, lookahead, until) for k in range(steps - 1)) + 1


def least_budget(config: MethodConfig, sample: int, prior: int) -> int:
    return particle_evaluations(config.sampler.steps) * (sample // config.sampler.steps)


register_method(MethodPlugin(
    "das", "SMC with proposals twisted by the one-step gradient, tempering and importance weights (a baseline)",
    "doodl_ray.methods.das:das", DasConfig, gradient="one-step", least_budget=least_budget,
))
