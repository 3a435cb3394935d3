"""Settings of a weighted combination of guidance types (implemented by guidance.combination)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from doodl_ray.config import StrictModel
from doodl_ray.guidance.checks import Checks, ImageShape
from doodl_ray.guidance.registry import GuidanceConfig, GuidanceSpec, register_guidance
from doodl_ray.guidance.settings import Weight

if TYPE_CHECKING:
    import torch

    from doodl_ray.guidance.base import Guidance


class CombinationTerm(StrictModel):
    """One weighted term of a combination; `name` keys its reported loss and its per-item target."""

    name: str | None = Field(None, min_length=1, description="Default: the term's guidance type.")
    weight: Weight = 1.0
    guidance: GuidanceConfig

    @field_validator("guidance")
    @classmethod
    def _single(cls, value: GuidanceSpec) -> GuidanceSpec:
        if value.type == "combination":
            raise ValueError("a term is one guidance type; combinations do not nest")
        return value


@register_guidance
class CombinationGuidanceConfig(GuidanceSpec):
    """Weighted sum of guidance losses, each term reported separately. An item's target is either a
    mapping {term name: target} (terms not named get no target) or one value shared by every term that
    takes a per-item target (aesthetic terms take none)."""

    type: Literal["combination"] = "combination"
    terms: list[CombinationTerm] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "CombinationGuidanceConfig":
        names = self.term_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"term names must be unique; give terms explicit names ({', '.join(duplicates)} repeat)")
        return self

    def term_names(self) -> list[str]:
        return [t.name or t.guidance.type for t in self.terms]

    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        for term in self.terms:
            term.guidance.check(checks, image_shape)

    def build(self, device: "torch.device | str", storage_options: dict[str, Any],
              image_shape: Optional[ImageShape]) -> "Guidance":
        from doodl_ray.guidance.combination import CombinationGuidance

        return CombinationGuidance([(name, t.weight, t.guidance.build(device, storage_options, image_shape))
                                    for name, t in zip(self.term_names(), self.terms)])

    def files(self) -> list[str]:
        return [ref for term in self.terms for ref in term.guidance.files()]

    def needs_model_to_validate(self) -> bool:
        return any(term.guidance.needs_model_to_validate() for term in self.terms)

    def downloads_weights(self) -> bool:
        return any(term.guidance.downloads_weights() for term in self.terms)
