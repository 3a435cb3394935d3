"""DOODL's settings (method `doodl`, implemented in methods/doodl.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from doodl_ray.config import StrictModel
from doodl_ray.methods.registry import MethodConfig, MethodPlugin, register_method


class DoodlConfig(StrictModel):
    """DOODL's optimization of the initial noise. Defaults are the reference code's."""

    iterations: int = Field(50, ge=0, le=10_000, description="Gradient steps on the initial noise.")
    optimizer: Literal["reference", "normalized", "adam"] = Field(
        "reference",
        description="reference: clipped heavy-ball step with noise; normalized: per-item unit-RMS gradient step; "
        "adam: torch.optim.Adam. All renormalize to the initial noise norm.",
    )
    grad_scale: float = Field(0.25, gt=0, description="reference: step d = -grad_scale * gradient.")
    clip: float = Field(1e-3, gt=0, description="reference: elementwise clip of the step.")
    momentum: float = Field(0.9, ge=0, lt=1, description="reference: heavy-ball momentum.")
    noise: float = Field(1e-4, ge=0, description="reference: std of the Gaussian noise added each step.")
    lr: float = Field(0.05, gt=0, description="normalized/adam: learning rate (in units of the noise RMS).")
    sampler: Literal["chain", "edict"] = Field(
        "edict",
        description="What renders each iterate and carries its gradient: chain, the model's own single chain "
        "(DDIM / the flow ODE's Euler steps; 3N - 1 network passes per gradient); edict, the two coupled, exactly "
        "invertible chains of the paper (6N - 2, or 6N reversible).",
    )
    gradient: Literal["checkpoint", "reversible"] = Field(
        "checkpoint", description="How each step's input is recovered in the backward pass (reversible: edict only, "
        "memory O(1) in the steps)."
    )
    optimize_steps: int | None = Field(
        None, ge=1, le=1000, description="Optimize through a sampler of this many steps, then render the chosen noise "
        "at sampler.steps (cheaper iterations; the row's guide/optimized score says what the short render reached). "
        "None: optimize at sampler.steps.",
    )
    prior_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the diffusion prior (the model's own denoising error on the result, an ELBO "
        "term) added to the guidance loss: keeps the optimized image on the data. 0: off (the reference).",
    )

    @model_validator(mode="after")
    def _reversible_needs_edict(self) -> "DoodlConfig":
        if self.gradient == "reversible" and self.sampler != "edict":
            raise ValueError("gradient 'reversible' needs sampler 'edict' (the single chain is not invertible)")
        return self


def least_budget(config: MethodConfig, sample: int, prior: int) -> int:
    """One iterate: its render (both EDICT chains, at optimize_steps when set), its prior when iterates are ranked
    by it, and the final render at sampler.steps after a short optimization."""
    d, chains = config.doodl, 1 if config.doodl.sampler == "chain" else 2
    per_step = sample // config.sampler.steps
    need = chains * per_step * (d.optimize_steps or config.sampler.steps)
    if config.prior.selection or config.stop.prior is not None:
        need += prior
    return need + (chains * sample if d.optimize_steps else 0)


register_method(MethodPlugin(
    "doodl", "optimize the initial noise through the whole sampler (the paper); --prior-weight keeps it on the data",
    "doodl_ray.methods.doodl:doodl", DoodlConfig, gradient="exact", least_budget=least_budget,
))
