"""Multi-crop augmentation: many near-full-frame random crops per image, so the guide cannot be fooled
by a pixel-exact adversarial pattern. Unlike the reference, crops really differ at every model size."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "min"]


class MultiCrop:
    """K crops of side floor(r**power * (S - m) + m), r ~ U(0, 1), S = short image side, m = min_fraction * S,
    at a random offset, each resized to `size`. Randomness comes from per-item generators."""

    def __init__(self, count: int = 16, power: float = 0.3, min_fraction: float = 0.5, reduction: Reduction = "mean"):
        if count < 0:
            raise ValueError("crop count must be >= 0")
        if reduction not in ("mean", "min"):
            raise ValueError(f"crop reduction must be 'mean' or 'min', not {reduction!r}")
        self.count, self.power, self.min_fraction, self.reduction = count, power, min_fraction, reduction

    def crops(self, images: Tensor, size: tuple[int, int], generators: Sequence[torch.Generator] | None) -> Tensor:
        """[B, C, H, W] -> [B * K, C, *size] (K = 1 and the whole frame when there is no augmentation)."""
        if generators is None or self.count == 0:
            return _resize(images, size)
        _, _, height, width = images.shape
        side_max = min(height, width)
        side_min = max(1, int(self.min_fraction * side_max))
        out = []
        for image, gen in zip(images, generators):
            r = torch.rand(self.count, 3, generator=gen, device=gen.device).cpu().tolist()
            for ri, ry, rx in r:
                side = int(ri**self.power * (side_max - side_min) + side_min)
                top = int(ry * (height - side + 1))
                left = int(rx * (width - side + 1))
                out.append(image[:, top : top + side, left : left + side].unsqueeze(0))
        return torch.cat([_resize(c, size) for c in out])

    def reduce(self, values: Tensor, batch: int) -> Tensor:
        """[B * K] per-crop losses -> [B] per-item losses."""
        values = values.view(batch, -1)
        return values.mean(dim=1) if self.reduction == "mean" else values.min(dim=1).values


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)
