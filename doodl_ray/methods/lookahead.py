"""Lookahead: DAS's twisted sequential Monte Carlo (`das.py`) with the exact gradient of each particle's own
future image instead of its one-step estimate.

At step k a particle's twist is the reward of the deterministic render of its remaining chain, run through
`lookahead.steps` of the schedule's remaining levels (`Schedule.lookahead`; the whole remaining chain, exactly,
once N − k ≤ steps), and its proposal is shifted by the exact gradient of that reward through the render, the
decoder and the guide. Early in sampling the one-step estimate x̂0 is a blur the guide cannot read, so DAS's
twist and gradient say little about which class a particle is becoming; a short render shows the digit it will
be. Each step costs `steps` forwards and VJPs per particle instead of one (fewer particles at a budget); the
importance weights keep the target p(x) exp(r/α) exact whatever the twist."""

from __future__ import annotations

from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.base import MethodResult, Problem
from doodl_ray.methods.das import twisted_smc


def lookahead(problem: Problem, config: MethodConfig) -> MethodResult:
    return twisted_smc(problem, config, config.lookahead, config.lookahead.steps, config.lookahead.until)
