"""Escalation ladders and dataset budgets in a job spec: what a ladder is and what it may cost.

People who generate datasets pay for accepted images, not for attempts, and most items are easy: a ladder
(`method.ladder`) runs every item on its first rung (a cheap method), checks each result against an acceptance
rule (`method.acceptance`: thresholds on the guide's loss or target probability, the diffusion prior, and an
acceptance model that is not the guide), and moves only the items it rejects up to the next, dearer rung. A
dataset budget (`budget.total_unet_evals`) caps the whole job. Each rung is an ordinary method setting
(`MethodConfig`). Torch-free: a spec validates at CLI start. The driver's side is `jobs.escalation`, the
worker's `jobs.ladder_worker`."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from doodl_ray.config import PriorConfig, StrictModel
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.registry import GuidanceConfig


class AcceptanceConfig(StrictModel):
    """When a rung's result is good enough to keep: every threshold that is set holds. The acceptance model is
    any guidance spec, and should not be the guide: a result can fool the model it was steered by."""

    guide_loss: Optional[float] = Field(None, description="The guide's unaugmented loss on the image is at most this.")
    target_probability: Optional[float] = Field(
        None, gt=0, lt=1, description="Classifier guide: its probability of the target on the whole image is at "
        "least this (guide_loss = -ln p).")
    prior: Optional[float] = Field(
        None, gt=0, description="The diffusion prior (the model's own denoising error on the image: low where the "
        "model finds it likely) is at most this; pixel-space models, whose image is the latent.")
    prior_levels: tuple[float, ...] = Field(PriorConfig().levels, min_length=1,
                                            description="Noise levels of that prior, as fractions of the model's "
                                            "training timesteps.")
    model: Optional[GuidanceConfig] = Field(None, description="Acceptance model: any guidance spec, e.g. a second "
                                            "classifier or a CLIP model; not the guide, never the evaluation model.")
    model_loss: Optional[float] = Field(None, description="The acceptance model's unaugmented loss is at most this.")
    model_probability: Optional[float] = Field(
        None, gt=0, lt=1, description="Classifier acceptance model: its probability of the target is at least this.")

    @field_validator("prior_levels")
    @classmethod
    def _levels_in_range(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < level < 1 for level in levels):
            raise ValueError("every prior level must be in (0, 1)")
        return levels

    @model_validator(mode="after")
    def _thresholds(self) -> "AcceptanceConfig":
        if self.guide_loss is not None and self.target_probability is not None:
            raise ValueError("give guide_loss or target_probability, not both")
        if self.model_loss is not None and self.model_probability is not None:
            raise ValueError("give model_loss or model_probability, not both")
        if (self.model is None) != (self.model_max_loss is None):
            raise ValueError("an acceptance model needs a threshold (model_loss or model_probability), and back")
        if self.model_probability is not None and self.model.type != "classifier":
            raise ValueError("model_probability needs a classifier acceptance model; use model_loss")
        if self.checks == 0:
            raise ValueError("set at least one threshold: guide_loss or target_probability, prior, or a model")
        return self

    @property
    def guide_max_loss(self) -> Optional[float]:
        """The guide threshold as a loss (a target probability p is the loss -ln p)."""
        return self.guide_loss if self.target_probability is None else -math.log(self.target_probability)

    @property
    def model_max_loss(self) -> Optional[float]:
        return self.model_loss if self.model_probability is None else -math.log(self.model_probability)

    @property
    def checks(self) -> int:
        """How many thresholds are set: a result that meets all of them is accepted."""
        return sum(v is not None for v in (self.guide_max_loss, self.prior, self.model_max_loss))

    def prior_cost(self) -> int:
        """UNet evaluations the prior threshold adds to each rung's result (a pixel model has one pass)."""
        return len(self.prior_levels) if self.prior is not None else 0


class LadderConfig(StrictModel):
    """`method` as an escalation ladder: rungs in order, cheapest first, and the acceptance rule."""

    ladder: list[MethodConfig] = Field(min_length=1, description="The rungs, each a method setting like `method`; "
                                       "an item runs the next only when the ones before did not give an accepted "
                                       "result. Every rung makes images of the same size.")
    acceptance: AcceptanceConfig

    @model_validator(mode="after")
    def _one_image_size(self) -> "LadderConfig":
        sizes = {(r.sampler.height, r.sampler.width) for r in self.ladder}
        if len(sizes) > 1:
            raise ValueError("every rung must make images of the same size (sampler.height, sampler.width)")
        return self

    @property
    def name(self) -> str:
        """What rows and provenance call the job's method (each row also names its rung's method)."""
        return "ladder"

    def cap(self, rung: int) -> Optional[int]:
        """The most UNet evaluations rung `rung` (1-based) may spend on one item, acceptance included; None
        when the rung sets no budget."""
        budget = self.ladder[rung - 1].budget
        return None if budget is None else budget + self.acceptance.prior_cost()


class BudgetConfig(StrictModel):
    """The whole job's compute: a ladder stops escalating when the next rung would overrun it."""

    total_unet_evals: Optional[int] = Field(
        None, ge=1, description="UNet evaluations for the whole job (every rung of every item, acceptance "
        "included). Every item gets its first rung before any item gets its second; when the budget cannot pay "
        "for the next rung, the items still waiting end `unaccepted` with their best image. None: no cap.")


def check_ladder(method: Any, budget: BudgetConfig, guidance_type: Optional[str]) -> None:
    """The spec-level rules of ladders and budgets (ValueError, for the spec's validator)."""
    ladder = method if isinstance(method, LadderConfig) else None
    if ladder is not None and ladder.acceptance.target_probability is not None and guidance_type != "classifier":
        raise ValueError("method.acceptance.target_probability needs classifier guidance; use guide_loss")
    if budget.total_unet_evals is None:
        return
    if ladder is None:
        raise ValueError("budget.total_unet_evals needs an escalation ladder (method.ladder)")
    unset = [i for i, rung in enumerate(ladder.ladder, 1) if rung.budget is None]
    if unset:
        raise ValueError(f"budget.total_unet_evals needs a budget on every rung (method.ladder rung {unset[0]} "
                         "has none): the driver reserves it before the rung runs")


def check_first_rung(ladder: LadderConfig, budget: BudgetConfig, items: int) -> None:
    """A dataset budget too small for every item's first rung: InvalidInput, one line (preflight)."""
    if budget.total_unet_evals is None or items == 0:
        return
    cap = ladder.cap(1)
    assert cap is not None  # check_ladder: every rung has a budget
    if items * cap > budget.total_unet_evals:
        raise InvalidInput(f"budget.total_unet_evals {budget.total_unet_evals} is too small for every item's first "
                           f"rung: {items} items x {cap} UNet evaluations ({ladder.ladder[0].name}) = {items * cap}")


def rung_seed(seed: int, rung: int) -> int:
    """The seed of an item's rung (1-based): the first rung uses the item's own seed, each later one a fresh,
    stable seed of its own, so escalating is a new draw, never the same sample again."""
    if rung == 1:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{seed}:rung:{rung}".encode()).digest()[:8], "big") >> 1
