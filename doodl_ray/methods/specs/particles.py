"""Particle steering's settings (method `particles`, implemented in methods/particles.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from doodl_ray.config import StrictModel
from doodl_ray.methods.registry import MethodPlugin, register_method

Resampling = Literal["multinomial", "stratified", "systematic", "ssp"]


class ParticleConfig(StrictModel):
    """particles: Feynman-Kac steering (Singhal et al. 2025) with one-step potentials: particles per item on a
    stochastic DDIM chain, resampled within each item by exp(temperature * reward change) of their x0 estimate."""

    count: int | None = Field(None, ge=1, description="Particles per item; default: from the budget.")
    temperature: float = Field(3.0, gt=0, description="lambda: how strongly the reward (-guide loss) tilts resampling "
                               "(3: the best of 3, 10, 30 on the digits, held-out seeds).")
    potential: Literal["difference", "max"] = Field(
        "difference", description="difference: exp(lambda (r_t - r_prev)); max: exp(lambda max_s<=t r_s)."
    )
    interval: int = Field(5, ge=1, description="Resample every this many steps.")
    eta: float = Field(1.0, ge=0, le=1, description="DDIM stochasticity (1: DDPM-like), so resampled copies diverge.")
    resampling: Resampling = Field(
        "multinomial", description="multinomial (FK's code), stratified, systematic or ssp (lower-variance schemes).")
    tempering: float | None = Field(
        None, gt=0, description="gamma of a temperature rising over the steps: lambda_k = lambda * min(1, (1 + gamma)^k "
        "- 1) (DAS's schedule). None: lambda at every step.",
    )


register_method(MethodPlugin(
    "particles", "Feynman-Kac steering: particles resampled by the guide's reward on their one-step estimates "
    "(a baseline)", "doodl_ray.methods.particles:particles", ParticleConfig,
))
