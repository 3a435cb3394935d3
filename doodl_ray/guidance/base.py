"""The guidance contract: a frozen, differentiable, per-item loss on generated images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import Tensor, nn


class Guidance(nn.Module, ABC):
    """A loss on images in [0, 1], NCHW, one value per item (lower is better).

    `targets[i]` is item i's target as returned by `validate_target` (a class index, a text, ...).
    `generators[i]` drives item i's random augmentation; `None` evaluates without augmentation,
    which is what scores and best-iterate selection use.
    """

    name: str = "guidance"

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
