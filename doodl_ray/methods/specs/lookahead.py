"""lookahead's settings (implemented in methods/lookahead.py)."""

from __future__ import annotations

from pydantic import Field

from doodl_ray.methods.registry import MethodConfig, MethodPlugin, register_method
from doodl_ray.methods.specs.das import DasConfig, particle_evaluations


class LookaheadConfig(DasConfig):
    """lookahead: DAS's twisted SMC whose twist is the reward of a short deterministic render of each particle's
    remaining chain, with the exact gradient through that render."""

    steps: int = Field(4, ge=1, le=100, description="Levels of the render from each particle to its image (1: DAS's "
                       "one-step estimate; the whole remaining chain once fewer steps are left).")
    until: float = Field(1.0, gt=0, le=1, description="Render ahead during this first fraction of the steps (where the "
                         "one-step estimate is a blur), DAS's one-step estimate after.")


def least_budget(config: MethodConfig, sample: int, prior: int) -> int:
    la = config.lookahead
    return particle_evaluations(config.sampler.steps, la.steps, la.until) * (sample // config.sampler.steps)


register_method(MethodPlugin(
    "lookahead", "DAS's twisted SMC with the exact gradient of a short render of each particle's remaining chain",
    "doodl_ray.methods.lookahead:lookahead", LookaheadConfig, gradient="exact", least_budget=least_budget,
))
