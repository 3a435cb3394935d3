"""Guidance specs (pydantic, shared by the CLI and the job spec) and the one place that builds them.

Every spec is validated by `parse_guidance_config` (bad fields -> InvalidInput) and statically checked by
`check_guidance` (unknown model names, missing weight files, unreadable reference images -> InvalidInput /
ModelLoadError) without loading any weights, so a job fails on the driver before any actor starts.
`build_guidance` loads the frozen models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
import yaml
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from doodl_ray.config import StrictModel, validation_problems
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.base import Guidance
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
        return MultiCrop(self.count, self.power, self.min_fraction, self.reduction)


class ClipModelConfig(StrictModel):
    """One open_clip model. Its input size and normalization come from open_clip's own pretrained config
    for the tag (or the folder's open_clip_config.json); `mean`/`std` override them, e.g. for a checkpoint
    file whose training normalization open_clip cannot know (a file gets open_clip's default, OpenAI's)."""

    model: str = Field(
        description="open_clip architecture (ViT-L-14-quickgelu, ViT-H-14, ViT-g-14, ...) or a folder, local or "
        "URI, in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors)."
    )
    pretrained: str | None = Field(
        None,
        description="With an architecture name: an open_clip pretrained tag (openai, laion2b_s32b_b79k, ...) or a "
        "checkpoint file, local or URI. Required there (a random CLIP is no guide); not allowed with a folder.",
    )
    weight: Weight = Field(1.0, description="Weight of this model in the weighted mean over models.")
    mean: RGB | None = Field(None, description="Override of the model's normalization mean.")
    std: RGB | None = Field(None, description="Override of the model's normalization std.")


def _default_clip_models() -> list[ClipModelConfig]:
    return [ClipModelConfig(model="ViT-g-14", pretrained="laion2b_s12b_b42k")]  # the DOODL reference guide


class ClipTextGuidanceConfig(StrictModel):
    """Spherical distance between CLIP embeddings of image crops and of a guidance text. An item's target
    is its guidance text; without one, its generation prompt is used."""

    type: Literal["clip-text"] = "clip-text"
    models: list[ClipModelConfig] = Field(default_factory=_default_clip_models, min_length=1)
    crops: CropConfig = CropConfig()


class ClipImageGuidanceConfig(StrictModel):
    """Spherical distance to the normalized mean CLIP embedding of reference images. An item's target is
    one or more reference images (path, URI, or image bytes); `references` serve items without one."""

    type: Literal["clip-image"] = "clip-image"
    models: list[ClipModelConfig] = Field(default_factory=_default_clip_models, min_length=1)
    references: list[str] = Field(default_factory=list, description="Default reference images (paths or URIs).")
    crops: CropConfig = CropConfig()


class AestheticGuidanceConfig(StrictModel):
    """LAION aesthetic predictor (v1 linear or v2 MLP, told apart by the weights file) on the normalized
    CLIP ViT-L/14 image embedding. Loss -score, or |score - target_score| when a target score is set.
    The target score is part of the spec: items carry no aesthetic target."""

    type: Literal["aesthetic"] = "aesthetic"
    weights: str = Field(description="Predictor weights: .safetensors or a plain state dict (.pth), local or URI.")
    clip: ClipModelConfig = ClipModelConfig(model="ViT-L-14-quickgelu", pretrained="openai")
    target_score: float | None = Field(None, allow_inf_nan=False, description="Aim for this score instead of maximizing.")
    crops: CropConfig = CropConfig()


class ClassifierGuidanceConfig(StrictModel):
    """Cross-entropy of an image classifier's logits with each item's target class (index or label).
    Input size, normalization and labels come from the model's own config; the fields below override."""

    type: Literal["classifier"] = "classifier"
    model: str = Field(
        description="timm:NAME, torchvision:NAME, hf:HUB_ID_OR_FOLDER (local or URI), or a TorchScript file "
        "(local or URI, optional doodl.json extra file with input_size/mean/std/labels)."
    )
    weights: str | None = Field(
        None,
        description="timm/torchvision: a checkpoint file (.safetensors or plain state dict), local or URI; "
        "torchvision also takes a weights enum name (DEFAULT, IMAGENET1K_V2). Default: the library's pretrained weights.",
    )
    num_classes: int | None = Field(None, ge=1, description="Head size of a checkpoint (default: len(labels) or the model's).")
    labels: list[str] | None = Field(None, description="Class names, index order (default: the model's own).")
    input_size: tuple[int, int] | None = Field(None, description="Override of the model's input size (H, W).")
    mean: RGB | None = None
    std: RGB | None = None
    crops: CropConfig = CropConfig()

    @model_validator(mode="after")
    def _weights_only_for_libraries(self) -> "ClassifierGuidanceConfig":
        if self.weights and not self.model.startswith(("timm:", "torchvision:")):
            raise ValueError("'weights' applies to timm: and torchvision: models only")
        if self.labels and self.num_classes and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        return self


LeafGuidanceConfig = Annotated[
    Union[ClipTextGuidanceConfig, ClipImageGuidanceConfig, AestheticGuidanceConfig, ClassifierGuidanceConfig],
    Field(discriminator="type"),
]


class CombinationTerm(StrictModel):
    """One weighted term of a combination; `name` keys its reported loss and its per-item target."""

    name: str | None = Field(None, min_length=1, description="Default: the term's guidance type.")
    weight: Weight = 1.0
    guidance: LeafGuidanceConfig


class CombinationGuidanceConfig(StrictModel):
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


GuidanceConfig = Annotated[
    Union[
        ClipTextGuidanceConfig,
        ClipImageGuidanceConfig,
        AestheticGuidanceConfig,
        ClassifierGuidanceConfig,
        CombinationGuidanceConfig,
    ],
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter = TypeAdapter(GuidanceConfig)


def parse_guidance_config(data: Any) -> Any:
    """A GuidanceConfig from plain data (e.g. a YAML mapping); any problem -> InvalidInput in one line."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidInput(f"bad guidance spec: {validation_problems(exc, 'guidance')}") from None


def load_guidance_spec(path: str | Path) -> Any:
    """A GuidanceConfig from a YAML file (`doodl-ray generate --guidance-spec`): either one guidance mapping,
    or a job spec whose `guidance:` section is used, so one file can serve the CLI and a job."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read guidance spec {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(data, dict) and "type" not in data and "guidance" in data:
        data = data["guidance"]
    return parse_guidance_config(data)


def check_guidance(config: Any, storage_options: dict | None = None) -> None:
    """Static checks that need no weights: model names exist, weight files and reference images are readable.
    Raises InvalidInput / ModelLoadError; meant for the driver, before any actor starts."""
    opts = storage_options or {}
    if isinstance(config, CombinationGuidanceConfig):
        for term in config.terms:
            check_guidance(term.guidance, opts)
    elif isinstance(config, (ClipTextGuidanceConfig, ClipImageGuidanceConfig)):
        from doodl_ray.guidance.clip import check_clip_model, read_reference

        for model in config.models:
            check_clip_model(model, opts)
        for ref in getattr(config, "references", []):
            read_reference(ref, opts)
    elif isinstance(config, AestheticGuidanceConfig):
        from doodl_ray.guidance.aesthetic import check_aesthetic

        check_aesthetic(config, opts)
    elif isinstance(config, ClassifierGuidanceConfig):
        from doodl_ray.guidance.zoo import check_classifier

        check_classifier(config, opts)
    else:
        raise TypeError(f"no checks for guidance spec {type(config).__name__}")


def needs_model_to_validate(config: Any) -> bool:
    """Whether checking an item's target needs the model itself (a classifier's labels and class count)."""
    if isinstance(config, CombinationGuidanceConfig):
        return any(needs_model_to_validate(term.guidance) for term in config.terms)
    return isinstance(config, ClassifierGuidanceConfig)


def build_guidance(config: Any, device: torch.device | str = "cpu", storage_options: dict | None = None) -> Guidance:
    """Load the frozen guidance model a spec names, on `device` (checks the spec first)."""
    opts = storage_options or {}
    check_guidance(config, opts)
    return _build(config, device, opts)


def _build(config: Any, device: torch.device | str, opts: dict) -> Guidance:
    if isinstance(config, CombinationGuidanceConfig):
        from doodl_ray.guidance.combination import CombinationGuidance

        terms = [(name, t.weight, _build(t.guidance, device, opts)) for name, t in zip(config.term_names(), config.terms)]
        return CombinationGuidance(terms)
    if isinstance(config, ClipTextGuidanceConfig):
        from doodl_ray.guidance.clip import ClipTextGuidance, load_clip

        encoders = [load_clip(m, device, opts) for m in config.models]
        return ClipTextGuidance(encoders, [m.weight for m in config.models], config.crops.build())
    if isinstance(config, ClipImageGuidanceConfig):
        from doodl_ray.guidance.clip import ClipImageGuidance, load_clip

        encoders = [load_clip(m, device, opts) for m in config.models]
        return ClipImageGuidance(
            encoders, [m.weight for m in config.models], config.crops.build(), config.references, opts
        )
    if isinstance(config, AestheticGuidanceConfig):
        from doodl_ray.guidance.aesthetic import load_aesthetic

        return load_aesthetic(config, device, opts)
    if isinstance(config, ClassifierGuidanceConfig):
        from doodl_ray.guidance.zoo import load_classifier

        return load_classifier(config, device, opts)
    raise TypeError(f"no builder for guidance spec {type(config).__name__}")
