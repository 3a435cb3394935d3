"""Multi-crop augmentation: many near-full-frame random crops per image, so the guide cannot be fooled
by a pixel-exact adversarial pattern. Unlike the reference, crops really differ at every model size.

Crops are cut from the generated image, then each goes through the guidance model's own eval transform
(`preprocess`), exactly as the whole frame does: the same resize, centre crop and normalization."""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

Reduction = Literal["mean", "min"]


class MultiCrop:
    """K crops of side floor(r**power * (S - m) + m), r ~ U(0, 1), S = short image side, m = min_fraction * S,
    at a random offset. Randomness comes from per-item generators."""

    def __init__(self, count: int = 16, power: float = 0.3, min_fraction: float = 0.5, reduction: Reduction = "mean"):
        if count < 0:
            raise ValueError("crop count must be >= 0")
        if reduction not in ("mean", "min"):
            raise ValueError(f"crop reduction must be 'mean' or 'min', not {reduction!r}")
        self.count, self.power, self.min_fraction, self.reduction = count, power, min_fraction, reduction

    def crops(self, images: Tensor, generators: Sequence[torch.Generator] | None) -> list[Tensor]:
        """[B, C, H, W] -> B * K crops [1, C, side, side], item-major (the whole frames when not augmenting)."""
        if generators is None or self.count == 0:
            return [images]
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
        return out

    def views(
        self, images: Tensor, preprocess: Callable[[Tensor], Tensor], generators: Sequence[torch.Generator] | None
    ) -> Tensor:
        """Model inputs [B * K, ...]: every crop (or whole frame, K = 1) through the model's `preprocess`."""
        return torch.cat([preprocess(crop) for crop in self.crops(images, generators)])

    def reduce(self, values: Tensor, batch: int) -> Tensor:
        """[B * K] per-crop losses -> [B] per-item losses."""
        values = values.view(batch, -1)
        return values.mean(dim=1) if self.reduction == "mean" else values.min(dim=1).values
