"""Guidance specs (pydantic, shared by the CLI and the job spec) and the one place that builds them.

Every spec is validated by `parse_guidance_config` (bad fields -> InvalidInput) and statically checked by
`check_guidance` (unknown model names, missing weight files, unreadable reference images -> InvalidInput /
ModelLoadError) without loading any weights, so a job fails on the driver before any actor starts; offline,
it runs what needs no network and lists what it skipped. `build_guidance` loads the frozen models (float32,
each with its own eval transform: see guidance.preprocess). Both take the diffusion model's decoded image
shape, (C, H, W), for classifiers whose files do not say what input they take.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from doodl_ray.config import StrictModel, validation_problems
from doodl_ray.data import LABEL_SETS, label_set
from doodl_ray.errors import InvalidInput
from doodl_ray.fetch import is_remote
from doodl_ray.guidance.checks import Checks
from doodl_ray.guidance.labels import read_labels

if TYPE_CHECKING:  # specs are plain data: validating one (every CLI start) needs no torch
    import torch

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
    The eval transform (resize, crop, normalization) and labels come from the model's own config; the fields
    below override. Labels are only ever the model's own (timm `label_names`, torchvision categories,
    transformers `id2label`, a file's doodl.json) or the spec's: a checkpoint without labels takes targets by
    index unless `labels` names them."""

    type: Literal["classifier"] = "classifier"
    model: str = Field(
        description="timm:NAME (also timm:hf-hub:ORG/REPO), torchvision:NAME, hf:HUB_ID_OR_FOLDER (local or URI), or a "
        "TorchScript or torch.export (.pt2) file, local or URI, with an optional doodl.json extra file "
        "(input_size/channels/mean/std/labels; missing fields come from the diffusion model's image shape)."
    )
    weights: str | None = Field(
        None,
        description="timm/torchvision: a checkpoint file (.safetensors or plain state dict), local or URI; "
        "torchvision also takes a weights enum name (DEFAULT, IMAGENET1K_V2). Default: the library's pretrained weights.",
    )
    num_classes: int | None = Field(None, ge=1, description="Head size of a checkpoint (default: len(labels) or the model's).")
    labels: list[str] | str | None = Field(
        None,
        description="Class names in index order (default: the model's own): a list, a bundled label set "
        f"({', '.join(sorted(LABEL_SETS))}), or a text file with one label per line, local or URI.",
    )
    input_size: tuple[int, int] | None = Field(
        None, description="Override of the model's input size (H, W), keeping its framing; not for hf: models."
    )
    mean: RGB | None = None
    std: RGB | None = None
    crops: CropConfig = CropConfig()

    @model_validator(mode="after")
    def _weights_only_for_libraries(self) -> "ClassifierGuidanceConfig":
        if self.weights and not self.model.startswith(("timm:", "torchvision:")):
            raise ValueError("'weights' applies to timm: and torchvision: models only")
        if self.input_size and self.model.startswith("hf:"):
            raise ValueError("input_size does not apply to hf: models: their image processor fixes the input")
        bundled = isinstance(self.labels, str) and self.labels in LABEL_SETS
        count = len(label_set(self.labels)) if bundled else len(self.labels) if isinstance(self.labels, list) else 0
        if count and self.num_classes and count != self.num_classes:
            raise ValueError(f"{count} labels for {self.num_classes} classes")
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


ImageShape = tuple[int, int, int]


def check_guidance(
    config: Any,
    storage_options: dict | None = None,
    image_shape: ImageShape | None = None,
    offline: bool = False,
) -> list[str]:
    """Static checks that need no weights: model names exist, weight files, label files and reference images are
    readable, the guide can take `image_shape` (C, H, W) images. With `image_shape`, classifier files are also
    loaded on the CPU and probed with one such image, since only the program can say whether it fits.
    Raises InvalidInput / ModelLoadError; meant for the driver, before any actor starts. Offline, checks that
    need remote storage or a model hub are skipped; the return value describes each, one line (else [])."""
    checks = Checks(storage_options or {}, offline)
    if image_shape is not None and (len(image_shape) != 3 or not all(int(d) > 0 for d in image_shape)):
        raise InvalidInput(f"image shape must be (channels, height, width), not {image_shape}")
    _check(config, checks, tuple(image_shape) if image_shape else None)
    return checks.skipped


def _check(config: Any, checks: Checks, image_shape: ImageShape | None) -> None:
    if isinstance(config, CombinationGuidanceConfig):
        for term in config.terms:
            _check(term.guidance, checks, image_shape)
        return
    if isinstance(config, ClassifierGuidanceConfig):
        from doodl_ray.guidance.zoo import check_classifier

        check_classifier(config, checks, image_shape)
    elif isinstance(config, (ClipTextGuidanceConfig, ClipImageGuidanceConfig)):
        from doodl_ray.guidance.clip import check_clip_model, read_reference

        check_rgb(image_shape, "CLIP")
        for model in config.models:
            check_clip_model(model, checks)
        for ref in getattr(config, "references", []):
            if checks.reachable(ref, "reference image"):
                read_reference(ref, checks.storage_options)
    elif isinstance(config, AestheticGuidanceConfig):
        from doodl_ray.guidance.aesthetic import check_aesthetic

        check_rgb(image_shape, "aesthetic guidance")
        check_aesthetic(config, checks)
    else:
        raise TypeError(f"no checks for guidance spec {type(config).__name__}")


def check_rgb(image_shape: ImageShape | None, what: str) -> None:
    """RGB models take RGB images, or one-channel ones, repeated to RGB as PIL's convert("RGB") does."""
    if image_shape is not None and image_shape[0] not in (1, 3):
        raise InvalidInput(f"{what} takes RGB images; the diffusion model makes {image_shape[0]}-channel images")


def static_labels(config: Any) -> list[str] | None:
    """The class names a classifier spec fixes without loading a model or reading remote storage: its label
    list, bundled label set or local label file (InvalidInput if unreadable); None otherwise (the model's own
    labels need the model; a remote label file is read when the model is built)."""
    if not isinstance(config, ClassifierGuidanceConfig) or config.labels is None:
        return None
    if isinstance(config.labels, str) and is_remote(config.labels):
        return None
    return read_labels(config.labels)


def needs_model_to_validate(config: Any) -> bool:
    """Whether checking an item's target needs the model itself (a classifier's labels and class count)."""
    if isinstance(config, CombinationGuidanceConfig):
        return any(needs_model_to_validate(term.guidance) for term in config.terms)
    return isinstance(config, ClassifierGuidanceConfig)


def build_guidance(
    config: Any,
    device: torch.device | str = "cpu",
    storage_options: dict | None = None,
    image_shape: ImageShape | None = None,
) -> Guidance:
    """Load the frozen guidance model a spec names, on `device` (checks the spec first). `image_shape` (C, H, W)
    is what the diffusion model decodes to: a classifier file that does not describe its input takes that."""
    opts = storage_options or {}
    check_guidance(config, opts)
    return _build(config, device, opts, tuple(image_shape) if image_shape else None)


def _build(config: Any, device: torch.device | str, opts: dict, image_shape: ImageShape | None) -> Guidance:
    if isinstance(config, CombinationGuidanceConfig):
        from doodl_ray.guidance.combination import CombinationGuidance

        terms = [
            (name, t.weight, _build(t.guidance, device, opts, image_shape))
            for name, t in zip(config.term_names(), config.terms)
        ]
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

        return load_classifier(config, device, opts, image_shape)
    raise TypeError(f"no builder for guidance spec {type(config).__name__}")
