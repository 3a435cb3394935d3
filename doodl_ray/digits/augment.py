"""Seeded light augmentation for 16x16 digits: whole-pixel shifts (exact, for the UNet) and small affine
jitter (for the classifiers). Background is 0, so out-of-frame pixels are filled with 0."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(images01: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by an integer (dy, dx) in [-max_shift, max_shift], zero-filled."""
    if max_shift == 0:
        return images01
    n, _, h, w = images01.shape
    pad = F.pad(images01, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([pad[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def random_affine(
    images01: Tensor, generator: torch.Generator, degrees: float = 0.0, translate: float = 0.0, zoom: float = 0.0
) -> Tensor:
    """Rotate by up to ±degrees, translate by up to ±translate (fraction of the side), magnify by up to
    1 + zoom (the guide sees MultiCrop crops of half the frame and more, resized up, during DOODL)."""
    n = len(images01)
    u = torch.rand(n, 4, generator=generator) * 2.0 - 1.0
    angle = u[:, 0] * math.radians(degrees)
    scale = 1.0 / (1.0 + zoom * (u[:, 1] + 1.0) / 2.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift = u[:, 2:] * translate * 2.0  # affine_grid coordinates span [-1, 1]
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images01.shape), align_corners=False)
    return F.grid_sample(images01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
