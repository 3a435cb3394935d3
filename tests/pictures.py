"""Deterministic test pictures at the sizes guides see, for comparing our views with the libraries' own."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from PIL import Image

SHAPES = [(512, 512), (1024, 1024), (512, 768)]


@lru_cache(maxsize=None)
def picture(height: int, width: int) -> torch.Tensor:
    """A deterministic uint8 [3, H, W] picture: smooth colour fields, hard-edged shapes and grain."""
    gen = torch.Generator().manual_seed(height * 7 + width)
    x = F.interpolate(torch.rand(1, 3, 6, 9, generator=gen), size=(height, width), mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    x = torch.where((xx**2 + yy**2 < 0.3).expand(3, -1, -1), torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1), x)
    x = torch.where(((xx > 0.4) & (yy < -0.2)).expand(3, -1, -1), torch.tensor([0.1, 0.3, 0.95]).view(3, 1, 1), x)
    x = x + 0.03 * torch.randn(3, height, width, generator=gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def as_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())
