"""Settings of LAION aesthetic guidance (implemented by guidance.aesthetic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from doodl_ray.guidance.checks import Checks, ImageShape, check_rgb
from doodl_ray.guidance.registry import GuidanceSpec, register_guidance
from doodl_ray.guidance.settings import ClipModelConfig, CropConfig

if TYPE_CHECKING:
    import torch

    from doodl_ray.guidance.base import Guidance


@register_guidance
class AestheticGuidanceConfig(GuidanceSpec):
    """LAION aesthetic predictor (v1 linear or v2 MLP, told apart by the weights file) on the normalized
    CLIP ViT-L/14 image embedding. Loss -score, or |score - target_score| when a target score is set.
    The target score is part of the spec: items carry no aesthetic target."""

    type: Literal["aesthetic"] = "aesthetic"
    weights: str = Field(description="Predictor weights: .safetensors or a plain state dict (.pth), local or URI.")
    clip: ClipModelConfig = ClipModelConfig(model="ViT-L-14-quickgelu", pretrained="openai")
    target_score: float | None = Field(None, allow_inf_nan=False, description="Aim for this score instead of maximizing.")
    crops: CropConfig = CropConfig()

    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        from doodl_ray.guidance.aesthetic import check_aesthetic

        check_rgb(image_shape, "aesthetic guidance")
        check_aesthetic(self, checks)

    def build(self, device: "torch.device | str", storage_options: dict[str, Any],
              image_shape: Optional[ImageShape]) -> "Guidance":
        from doodl_ray.guidance.aesthetic import load_aesthetic

        return load_aesthetic(self, device, storage_options)

    def files(self) -> list[str]:
        return [ref for ref in (self.weights, self.clip.model, self.clip.pretrained) if ref]
