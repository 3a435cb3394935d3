"""Settings of classifier guidance (implemented by guidance.zoo and guidance.classifier)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, model_validator

from doodl_ray.data import LABEL_SETS, label_set
from doodl_ray.fetch import is_remote
from doodl_ray.guidance.checks import Checks, ImageShape
from doodl_ray.guidance.labels import read_labels
from doodl_ray.guidance.registry import GuidanceSpec, register_guidance
from doodl_ray.guidance.settings import RGB, CropConfig

if TYPE_CHECKING:
    import torch

    from doodl_ray.guidance.base import Guidance


@register_guidance
class ClassifierGuidanceConfig(GuidanceSpec):
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

    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        from doodl_ray.guidance.zoo import check_classifier

        check_classifier(self, checks, image_shape)

    def build(self, device: "torch.device | str", storage_options: dict[str, Any],
              image_shape: Optional[ImageShape]) -> "Guidance":
        from doodl_ray.guidance.zoo import load_classifier

        return load_classifier(self, device, storage_options, image_shape)

    def files(self) -> list[str]:
        return [ref for ref in (self.model, self.weights, self.labels) if isinstance(ref, str)]

    def needs_model_to_validate(self) -> bool:
        return True

    def static_labels(self) -> Optional[list[str]]:
        """Its label list, bundled label set or local label file (InvalidInput if unreadable); None when the
        labels are the model's own (they need the model) or a remote file (read when the model is built)."""
        if self.labels is None or (isinstance(self.labels, str) and is_remote(self.labels)):
            return None
        return read_labels(self.labels)

    def downloads_weights(self) -> bool:
        """timm's weights come from its hub, torchvision's from its URLs, unless a local checkpoint is given."""
        return self.model.startswith(("timm:", "torchvision:")) and (self.weights is None
                                                                     or not Path(self.weights).is_file())
