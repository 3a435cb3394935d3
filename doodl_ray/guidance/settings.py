"""Settings several guidance types share: multi-crop augmentation, one open_clip model, weights. Plain data
(pydantic): validating a spec needs no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from doodl_ray.config import StrictModel

if TYPE_CHECKING:
    from doodl_ray.guidance.crops import MultiCrop

Weight = Annotated[float, Field(gt=0, allow_inf_nan=False)]
RGB = tuple[float, float, float]


class CropConfig(StrictModel):
    """Multi-crop augmentation of the generated image before the guidance model sees it."""

    count: int = Field(16, ge=0, description="Crops per image and iteration (0: the whole image only).")
    power: float = Field(0.3, gt=0, description="Crop side = r**power * (S - m) + m, r ~ U(0, 1); small = near full frame.")
    min_fraction: float = Field(0.5, gt=0, le=1, description="m as a fraction of the image's short side S.")
    reduction: Literal["mean", "min"] = Field("mean", description="How per-crop losses become one (reference: min).")

    def build(self) -> MultiCrop:
        from doodl_ray.guidance.crops import MultiCrop

        return MultiCrop(self.count, self.power, self.min_fraction, self.reduction)


class ClipModelConfig(StrictModel):
    """One open_clip model. Its eval transform (size, resize mode, interpolation, mean, std) is open_clip's own
    `preprocess_cfg`: the pretrained tag's, the folder's or hub repo's open_clip_config.json. A checkpoint file
    says how it was trained: `tag` (a pretrained tag of the architecture it was trained like) or at least
    `mean` and `std`; it never silently gets OpenAI's constants. The preprocessing fields override."""

    model: str = Field(
        description="open_clip architecture (ViT-L-14-quickgelu, ViT-H-14, ViT-g-14, ...), hf-hub:ORG/REPO, or a "
        "folder, local or URI, in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors)."
    )
    pretrained: str | None = Field(
        None,
        description="With an architecture name: an open_clip pretrained tag (openai, laion2b_s32b_b79k, ...) or a "
        "checkpoint file, local or URI. Required there (a random CLIP is no guide); not allowed with a folder or hub repo.",
    )
    tag: str | None = Field(
        None,
        description="With a checkpoint file: the open_clip pretrained tag of this architecture whose preprocessing "
        "(and QuickGELU setting) the checkpoint was trained with.",
    )
    weight: Weight = Field(1.0, description="Weight of this model in the weighted mean over models.")
    mean: RGB | None = Field(None, description="Override of the model's normalization mean.")
    std: RGB | None = Field(None, description="Override of the model's normalization std.")
    interpolation: Literal["bicubic", "bilinear"] | None = Field(None, description="Override of the resize interpolation.")
    resize_mode: Literal["shortest", "longest", "squash"] | None = Field(
        None, description="Override of open_clip's resize mode: short side + centre crop, long side + pad, or squash."
    )


def default_clip_models() -> list[ClipModelConfig]:
    return [ClipModelConfig(model="ViT-g-14", pretrained="laion2b_s12b_b42k")]  # the DOODL reference guide

