"""Method settings shared by the CLI and the job spec (pydantic: validated, unknown keys rejected)."""

from __future__ import annotations

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
