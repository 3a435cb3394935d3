"""The guidance contract: a frozen, differentiable, per-item loss on generated images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.errors import ModelLoadError
from doodl_ray.fetch import local_copy


class Guidance(nn.Module, ABC):
    """A loss on images in [0, 1], NCHW, one value per item (lower is better).

    `targets[i]` is item i's target as returned by `validate_target` (a class index, a text, ...).
    `generators[i]` drives item i's random augmentation; `None` evaluates without augmentation,
    which is what scores and best-iterate selection use.
    """

    name: str = "guidance"
    takes_target: bool = True  # False: the guide's target is fixed by its spec; items must not carry one

    def freeze(self) -> "Guidance":
        """Frozen weights and eval mode: gradients flow to the image only, never to parameters."""
        self.eval()
        self.requires_grad_(False)
        return self

    @abstractmethod
    def validate_target(self, target: Any, prompt: str | None = None) -> Any:
        """Check and normalize one item's target (e.g. class name -> index); raise InvalidInput if bad.
        `prompt` is the item's generation prompt, for guides whose target may default to it."""

    @abstractmethod
    def loss(self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None) -> Tensor:
        """Per-item loss, shape [B]."""

    def terms(
        self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None
    ) -> dict[str, Tensor]:
        """Named per-item loss terms for reporting; combinations override this to report each term."""
        return {self.name: self.loss(images, targets, generators)}

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        """Per-item scores of the whole, unaugmented images for result rows: what a user reads (a probability,
        a similarity, an aesthetic score), not what is optimized. Default: the loss terms."""
        return self.terms(images, targets, None)


def evaluate(guidance: Guidance, images: Tensor, targets: Sequence[Any], prefix: str = "") -> list[dict[str, float]]:
    """One {prefix + score name: value} row per image: the guide's own scores, or those of an independent
    evaluation guidance (its targets validated by its own `validate_target`), to show gains that are not
    adversarial to the guide."""
    scores = guidance.scores(images, targets)
    return [{prefix + name: float(values[i]) for name, values in scores.items()} for i in range(images.shape[0])]


def load_weights(ref: str, storage_options: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """A state dict from .safetensors or a plain torch file (weights_only: never unpickles code), local or URI."""
    try:
        path = local_copy(ref, storage_options)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"weights file not found: {ref}") from None
    except Exception as exc:  # safetensors/pickle raise many types for corrupt or non-weight files
        raise ModelLoadError(f"{ref} is not a weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{ref} does not hold a state dict of tensors")
    return state
