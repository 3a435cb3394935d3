"""scikit-learn's bundled digits as 16x16 one-channel tensors, the fixed split, the rare-class set, and a
pixel-space nearest-neighbour distance (for memorization checks)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SIZE = 16  # side of every image the digits models see
NUM_CLASSES = 10
LABELS = [str(i) for i in range(NUM_CLASSES)]
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# 3, 5 and 8 share strokes with each other and with 9, so guiding towards them is a real test:
# the rare-class diffusion model must be pushed into a region it barely saw, not a disjoint one.
RARE_CLASSES = (3, 5, 8)
RARE_KEEP = 5  # images kept per rare class: 15 of ~1020, about 1.5% of the rare training set


def load_split(seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x, train_y, test_x, test_y): stratified 80/20 split, images [N, 1, 16, 16] in [0, 1]
    (0 = background), labels int64. The split only depends on `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=seed
    )
    return _upsample(x_tr), torch.as_tensor(y_tr, dtype=torch.int64), _upsample(x_te), torch.as_tensor(y_te, dtype=torch.int64)


def _upsample(images_0_16: np.ndarray) -> Tensor:
    """Bilinear, not nearest: the 8x8 digits are already block averages of 32x32 bitmaps, so smooth
    strokes are the honest reconstruction, and the UNet need not learn exact 2x2 pixel blocks."""
    x = torch.as_tensor(images_0_16, dtype=torch.float32).unsqueeze(1) / 16.0
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def rare_subset(
    images: Tensor, labels: Tensor, classes: tuple[int, ...] = RARE_CLASSES, keep: int = RARE_KEEP, seed: int = SPLIT_SEED
) -> tuple[Tensor, Tensor]:
    """The training set with each of `classes` cut to `keep` seeded random images; others untouched."""
    gen = torch.Generator().manual_seed(seed)
    keep_mask = torch.ones(len(labels), dtype=torch.bool)
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        dropped = idx[torch.randperm(len(idx), generator=gen)[keep:]]
        keep_mask[dropped] = False
    return images[keep_mask], labels[keep_mask]


def to_model_range(images01: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1], the diffusion model's pixel range."""
    return images01 * 2.0 - 1.0


def to_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped: what classifiers and image files take."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def nearest_train_distance(images01: Tensor, train_images01: Tensor) -> Tensor:
    """[N] L2 distance (pixel space, [0, 1] values) from each image to its nearest training image."""
    a = images01.reshape(len(images01), -1).float()
    b = train_images01.reshape(len(train_images01), -1).float().to(a.device)
    return torch.cdist(a, b).min(dim=1).values
