"""Method settings shared by the CLI and the job spec (pydantic: validated, unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class StrictModel(BaseModel):
    """Base for every spec: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_problems(exc: ValidationError, top: str) -> str:
    """Every problem of a ValidationError as 'field.path: message' on one line (`top` names the root)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or top}: {e['msg']}" for e in exc.errors(include_url=False))


class SamplerConfig(StrictModel):
    """EDICT sampling: number of DDIM steps, mixing weight, classifier-free guidance."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps (timesteps come from the model's scheduler).")
    mix: float = Field(0.93, gt=0.5, lt=1.0, description="EDICT mixing weight p.")
    leapfrog: bool = Field(True, description="Alternate which chain is updated first (EDICT default).")
    cfg_scale: float = Field(7.5, ge=0.0, description="Classifier-free guidance scale (text models only).")
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
    gradient: Literal["checkpoint", "reversible"] = Field(
        "checkpoint", description="How each step's input is recovered in the backward pass."
    )
    prior_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the diffusion prior (the model's own denoising error on the result, an ELBO "
        "term) added to the guidance loss: keeps the optimized image on the data. 0: off (the reference).",
    )
    prior_selection: float = Field(
        0.0,
        ge=0,
        description="Weight of the diffusion prior in choosing the best iterate (guidance loss + weight * "
        "prior): among iterates the guide likes, the most likely under the model. 0: guidance loss alone.",
    )
    prior_levels: tuple[float, ...] = Field(
        (0.3, 0.5, 0.7),
        min_length=1,
        description="Noise levels of the prior, as fractions of the model's training timesteps.",
    )

    @field_validator("prior_levels")
    @classmethod
    def _levels_in_range(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < level < 1 for level in levels):
            raise ValueError("every prior level must be in (0, 1)")
        return levels


class MethodConfig(StrictModel):
    """Which generation method to run, and its settings."""

    name: Literal["doodl", "one-step", "best-of-n", "none"] = "doodl"
    guidance_scale: float = Field(1.0, ge=0, description="Scale s of the guidance loss (DOODL) or gradient (one-step).")
    normalize_gradient: bool = Field(
        True, description="one-step: normalize the guidance gradient to unit RMS per image (the fair baseline)."
    )
    candidates: int = Field(8, ge=1, description="best-of-n: number of unguided samples to pick from.")
    sampler: SamplerConfig = SamplerConfig()
    doodl: DoodlConfig = DoodlConfig()
