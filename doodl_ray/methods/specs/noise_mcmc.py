"""Settings of the Markov chains over the initial noise (methods `noise-langevin` and `noise-mcmc`, implemented in
methods/noise_mcmc.py)."""

from __future__ import annotations

from pydantic import Field

from doodl_ray.config import StrictModel
from doodl_ray.methods.registry import MethodConfig, MethodPlugin, register_method


class NoiseMcmcConfig(StrictModel):
    """Prior-preserving Markov chains over the initial noise, targeting N(z) exp(reward(render(z)) / kl)."""

    chains: int = Field(4, ge=1, description="Chains per item.")
    rounds: int = Field(10, ge=0, description="Moves per chain without a budget (a budget sets them instead).")
    kl: float = Field(0.1, gt=0, description="alpha: the target tilts the model's images by exp(reward / alpha).")
    step_size: float = Field(0.5, gt=0, lt=4, description="h: the pCN correlation rho = (1 - h/4) / (1 + h/4).")
    drift_clip: float = Field(1.0, gt=0, description="noise-langevin: the drift's RMS per item is clipped to this.")
    render_steps: int | None = Field(
        10, ge=1, le=1000, description="Steps of the sampler the chains render through (the result is rendered again "
        "at sampler.steps); None: sampler.steps.",
    )


def evaluation_cost(steps: int, gradient: bool, prior: bool, levels: int) -> int:
    """Network evaluations of one chain state: its render, with a gradient the backward pass (3N - 1 in all),
    and its prior when results are ranked by it."""
    return (3 * steps - 1 if gradient else steps) + (levels if prior else 0)


def _least_budget(block: str, gradient: bool):
    def least(config: MethodConfig, sample: int, prior: int) -> int:
        mc = getattr(config, block)
        per_step = sample // config.sampler.steps
        steps = mc.render_steps or config.sampler.steps
        evaluation = evaluation_cost(steps, gradient, config.prior.selection > 0, len(config.prior.levels))
        return mc.chains * evaluation * per_step + sample

    return least


register_method(MethodPlugin(
    "noise-langevin", "prior-preserving Langevin chains (pCNL) over the initial noise, moved by the exact gradient "
    "of the rendered image", "doodl_ray.methods.noise_mcmc:noise_langevin", NoiseMcmcConfig, gradient="exact",
    least_budget=_least_budget("noise_langevin", True),
))
register_method(MethodPlugin(
    "noise-mcmc", "prior-preserving Metropolis chains (pCN) over the initial noise, no gradient (a baseline)",
    "doodl_ray.methods.noise_mcmc:noise_mcmc", NoiseMcmcConfig, least_budget=_least_budget("noise_mcmc", False),
))
