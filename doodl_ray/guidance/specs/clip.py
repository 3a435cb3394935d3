"""Settings of CLIP guidance, by text and by reference images (implemented by guidance.clip)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from doodl_ray.guidance.checks import Checks, ImageShape, check_rgb
from doodl_ray.guidance.registry import GuidanceSpec, register_guidance
from doodl_ray.guidance.settings import ClipModelConfig, CropConfig, default_clip_models

if TYPE_CHECKING:
    import torch

    from doodl_ray.guidance.base import Guidance


class ClipGuidance(GuidanceSpec):
    """What both CLIP guides share: their models' checks and files."""

    models: list[ClipModelConfig]

    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        from doodl_ray.guidance.clip import check_clip_model

        check_rgb(image_shape, "CLIP")
        for model in self.models:
            check_clip_model(model, checks)

    def files(self) -> list[str]:
        return [ref for m in self.models for ref in (m.model, m.pretrained) if ref]


@register_guidance
class ClipTextGuidanceConfig(ClipGuidance):
    """Spherical distance between CLIP embeddings of image crops and of a guidance text. An item's target
    is its guidance text; without one, its generation prompt is used."""

    type: Literal["clip-text"] = "clip-text"
    models: list[ClipModelConfig] = Field(default_factory=default_clip_models, min_length=1)
    crops: CropConfig = CropConfig()

    def build(self, device: "torch.device | str", storage_options: dict[str, Any],
              image_shape: Optional[ImageShape]) -> "Guidance":
        from doodl_ray.guidance.clip import ClipTextGuidance, load_clip

        encoders = [load_clip(m, device, storage_options) for m in self.models]
        return ClipTextGuidance(encoders, [m.weight for m in self.models], self.crops.build())


@register_guidance
class ClipImageGuidanceConfig(ClipGuidance):
    """Spherical distance to the normalized mean CLIP embedding of reference images. An item's target is
    one or more reference images (path, URI, or image bytes); `references` serve items without one."""

    type: Literal["clip-image"] = "clip-image"
    models: list[ClipModelConfig] = Field(default_factory=default_clip_models, min_length=1)
    references: list[str] = Field(default_factory=list, description="Default reference images (paths or URIs).")
    crops: CropConfig = CropConfig()

    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        from doodl_ray.guidance.clip import read_reference

        super().check(checks, image_shape)
        for ref in self.references:
            if checks.reachable(ref, "reference image"):
                read_reference(ref, checks.storage_options)

    def files(self) -> list[str]:
        return super().files() + self.references

    def build(self, device: "torch.device | str", storage_options: dict[str, Any],
              image_shape: Optional[ImageShape]) -> "Guidance":
        from doodl_ray.guidance.clip import ClipImageGuidance, load_clip

        encoders = [load_clip(m, device, storage_options) for m in self.models]
        return ClipImageGuidance(encoders, [m.weight for m in self.models], self.crops.build(), self.references,
                                 storage_options)
