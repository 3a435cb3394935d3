"""LAION aesthetic predictors on the normalized CLIP ViT-L/14 image embedding.

v1 is one linear layer 768 -> 1; v2 ("improved aesthetic predictor") an MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1.
The module layouts mirror the published state dicts (v1: `weight`, `bias`; v2: `layers.{0,2,4,6,7}.*`) so the
original files load as they are. The score is never clamped: the reference clamps it to [1, 10], which
zeroes the gradient for exactly the images that most need it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.guidance.base import Guidance, load_weights
from doodl_ray.guidance.checks import Checks
from doodl_ray.guidance.clip import ClipEncoder, check_clip_model, load_clip
from doodl_ray.guidance.crops import MultiCrop

if TYPE_CHECKING:  # the settings import this module to check and build: only their type is needed here
    from doodl_ray.guidance.specs.aesthetic import AestheticGuidanceConfig


class AestheticMLP(nn.Module):
    """The v2 predictor (dropout is inactive: the guide is always in eval mode)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def aesthetic_head(state: dict[str, Tensor], source: str = "weights") -> nn.Module:
    """v1 or v2 head, told apart by the state dict's keys, with the weights loaded strictly."""
    if "layers.0.weight" in state:
        head: nn.Module = AestheticMLP(state["layers.0.weight"].shape[1])
    elif set(state) == {"weight", "bias"}:
        head = nn.Linear(state["weight"].shape[1], 1)
    else:
        raise ModelLoadError(f"{source} is neither a v1 (weight, bias) nor a v2 (layers.*) aesthetic predictor")
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{source} does not fit the aesthetic predictor: {exc}") from None
    return head


class AestheticGuidance(Guidance):
    """Loss per crop: -score, or |score - target_score|; reduced over crops like every guide."""

    name = "aesthetic"
    takes_target = False

    def __init__(
        self, encoder: ClipEncoder, head: nn.Module, target_score: float | None = None, crops: MultiCrop | None = None
    ):
        super().__init__()
        dim = next(p for p in head.parameters()).shape[-1]
        with torch.no_grad():
            probe = encoder.embed_images(torch.zeros(1, 3, *encoder.input_size, device=encoder.device))
        if probe.shape[-1] != dim:
            raise ModelLoadError(f"aesthetic predictor takes {dim}-d embeddings; CLIP {encoder.label} gives {probe.shape[-1]}")
        self.encoder, self.head, self.target_score = encoder, head, target_score
        self.crops = crops or MultiCrop()
        self.freeze()

    def validate_target(self, target: Any, prompt: str | None = None) -> None:
        if target is not None:
            raise InvalidInput("aesthetic guidance takes no per-item target; set target_score in the guidance spec")
        return None

    def score(self, images: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
        """Predicted aesthetic score of every crop, [B * K]."""
        embeddings = self.encoder.embed_inputs(self.crops.views(images, self.encoder.preprocess, generators))
        return self.head(embeddings.to(next(self.head.parameters()).dtype)).squeeze(-1).float()

    def loss(self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None) -> Tensor:
        score = self.score(images, generators)
        per_crop = -score if self.target_score is None else (score - self.target_score).abs()
        return self.crops.reduce(per_crop, images.shape[0]).to(images.dtype)

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        return {self.name: self.score(images, None)}


def check_aesthetic(config: AestheticGuidanceConfig, checks: Checks | None = None) -> None:
    """The weights file exists and the CLIP model resolves (no weights loaded)."""
    checks = checks or Checks()
    if not checks.exists(config.weights, "aesthetic predictor weights"):
        raise ModelLoadError(f"aesthetic predictor weights not found: {config.weights}")
    check_clip_model(config.clip, checks)


def load_aesthetic(
    config: AestheticGuidanceConfig, device: torch.device | str = "cpu", storage_options: dict[str, Any] | None = None
) -> AestheticGuidance:
    """A frozen AestheticGuidance: the predictor head from its weights file on top of the spec's CLIP."""
    head = aesthetic_head(load_weights(config.weights, storage_options), config.weights).to(device)
    encoder = load_clip(config.clip, device, storage_options)
    return AestheticGuidance(encoder, head, config.target_score, config.crops.build())
