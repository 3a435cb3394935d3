"""Method settings shared by the CLI and the job spec (pydantic: validated, unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class StrictModel(BaseModel):
    """Base for every spec: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_problems(exc: ValidationError, top: str) -> str:
    """Every problem of a ValidationError as 'field.path: message' on one line (`top` names the root)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or top}: {e['msg']}" for e in exc.errors(include_url=False))


class SamplerConfig(StrictModel):
    """EDICT sampling: number of DDIM steps, mixing weight, classifier-free guidance."""

    steps: int = Field(50, ge=1, le=1000, description="Sampler steps: DDIM, or Euler steps of a flow model's ODE "
                       "(timesteps and shift come from the model's scheduler).")
    mix: float = Field(0.93, gt=0.5, lt=1.0, description="EDICT mixing weight p.")
    leapfrog: bool = Field(True, description="Alternate which chain is updated first (EDICT default).")
    cfg_scale: float | None = Field(
        None, ge=0.0, description="Classifier-free guidance scale (text models only; FLUX.1-dev: its embedded "
        "guidance, one pass). None: the model's own default (SD 7.5, SDXL 5.0, SD 3 7.0, FLUX 3.5).",
    )
    height: int | None = Field(None, ge=8, description="Image height in pixels; default: the model's native size.")
    width: int | None = Field(None, ge=8, description="Image width in pixels; default: the model's native size.")


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


class PriorConfig(StrictModel):
    """The diffusion prior (`methods/prior.py`: the model's own training loss on a result): where it is
    evaluated, and its weight when results are ranked (best iterate, best candidate, best particle)."""

    selection: float = Field(
        0.0,
        ge=0,
        description="Weight of the prior in ranking results (guidance loss + weight * prior): among results the "
        "guide likes, the most likely under the model. 0: guidance loss alone.",
    )
    levels: tuple[float, ...] = Field(
        (0.3, 0.5, 0.7),
        min_length=1,
        description="Noise levels of the prior, as fractions of the model's training timesteps.",
    )

    @field_validator("levels")
    @classmethod
    def _levels_in_range(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < level < 1 for level in levels):
            raise ValueError("every prior level must be in (0, 1)")
        return levels


class StopConfig(StrictModel):
    """Per-item early stop: an item whose current result meets every threshold that is set stops spending
    compute while the rest of its batch goes on (DOODL iterations, search candidates, refinement starts)."""

    guide_loss: float | None = Field(None, description="Stop once the unaugmented guidance loss is at most this.")
    target_probability: float | None = Field(
        None, gt=0, lt=1, description="Classifier guidance: stop once the target class's probability on the whole "
        "image is at least this (the same as guide_loss = -ln p).",
    )
    prior: float | None = Field(None, gt=0, description="...and the diffusion prior is at most this.")

    @model_validator(mode="after")
    def _one_guide_threshold(self) -> "StopConfig":
        if self.guide_loss is not None and self.target_probability is not None:
            raise ValueError("give guide_loss or target_probability, not both")
        if self.prior is not None and not self.enabled:
            raise ValueError("a prior threshold needs a guide threshold (guide_loss or target_probability)")
        return self

    @property
    def enabled(self) -> bool:
        return self.guide_loss is not None or self.target_probability is not None


class SearchConfig(StrictModel):
    """search-refine: sample candidates, rank them (guide loss + prior.selection * prior), then run DOODL
    from the best ones in turn with what is left of the budget."""

    candidates: int | None = Field(None, ge=1, description="Candidates per item; default: `fraction` of the budget.")
    fraction: float = Field(0.25, gt=0, le=1, description="Share of the budget spent on the search.")
    starts: int = Field(1, ge=1, description="DOODL runs from the best candidates, in rank order, each stopping early.")
    prune: bool = Field(
        True, description="Successive halving: candidates scored by their one-step estimate at 1/6, 1/3 and 2/3 of "
        "the steps, each item keeping its better half (about 2.7x the candidates per budget); false: full samples.",
    )


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
    select: Literal["weight", "value"] = Field(
        "weight", description="weight: the particle with the largest importance weight (the authors); value: the best "
        "guide loss + prior.selection * prior.",
    )


class LookaheadConfig(DasConfig):
    """lookahead: DAS's twisted SMC whose twist is the reward of a short deterministic render of each particle's
    remaining chain, with the exact gradient through that render."""

    steps: int = Field(4, ge=1, le=100, description="Levels of the render from each particle to its image (1: DAS's "
                       "one-step estimate; the whole remaining chain once fewer steps are left).")


MethodName = Literal["none", "one-step", "best-of-n", "doodl", "search-refine", "particles", "das", "lookahead"]
MIN_BUDGET_SAMPLES = {"one-step": 2, "doodl": 2, "das": 2}  # a guided sample, an EDICT sample, a twisted particle


class MethodConfig(StrictModel):
    """Which generation method to run (`doodl_ray/methods/`), and its settings."""

    name: MethodName = "doodl"
    budget: int | None = Field(
        None, ge=1, description="Compute per item in UNet evaluations (network passes, forward and VJP alike; "
        "CFG counts 2): sets candidates / iterations / particles. None: each method's own counts.",
    )
    guidance_scale: float = Field(1.0, ge=0, description="Scale s of the guidance loss (DOODL) or gradient (one-step).")
    normalize_gradient: bool = Field(
        True, description="one-step: normalize the guidance gradient to unit RMS per image."
    )
    candidates: int | None = Field(
        None, ge=1, description="best-of-n: unguided samples to pick from (default 8); one-step: guided samples to "
        "pick from (default 1). A budget sets it instead.",
    )
    sampler: SamplerConfig = SamplerConfig()
    doodl: DoodlConfig = DoodlConfig()
    prior: PriorConfig = PriorConfig()
    stop: StopConfig = StopConfig()
    search: SearchConfig = SearchConfig()
    particles: ParticleConfig = ParticleConfig()
    das: DasConfig = DasConfig()
    lookahead: LookaheadConfig = LookaheadConfig()

    @model_validator(mode="after")
    def _budget_makes_an_image(self) -> "MethodConfig":
        """A budget below one image's compute, checked with the spec (the engine also counts CFG's second pass)."""
        need = MIN_BUDGET_SAMPLES.get(self.name, 1) * self.sampler.steps
        if self.budget is not None and self.budget < need:
            raise ValueError(f"method {self.name} needs a budget of at least {need} UNet evaluations at "
                             f"{self.sampler.steps} steps (got {self.budget})")
        return self
