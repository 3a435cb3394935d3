"""The two digits classifiers and their TorchScript export. Both map normalized [N, 1, 16, 16] images
(x - 0.5) / 0.5 to [N, 10] logits; the normalization is applied by `ClassifierGuidance` from the
file's metadata. Their architectures differ on purpose, so the judge does not share the guide's blind
spots: a convolutional guide (smooth SiLU units, for useful input gradients) and an MLP-Mixer judge."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from doodl_ray.digits.data import LABELS, NUM_CLASSES, SIZE

METADATA = {"input_size": [SIZE, SIZE], "channels": 1, "mean": [0.5], "std": [0.5], "labels": LABELS}


def normalize(images01: Tensor) -> Tensor:
    """What `ClassifierGuidance` does with METADATA before calling the model (used in training)."""
    return (images01 - METADATA["mean"][0]) / METADATA["std"][0]


class GuideCNN(nn.Module):
    """Four 3x3 convolutions, two average pools, one linear head (~70k parameters)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(2 * width * (SIZE // 4) ** 2, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class _MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x: Tensor) -> Tensor:  # [N, tokens, dim]
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class JudgeMixer(nn.Module):
    """MLP-Mixer on 4x4 patches (16 tokens): no convolutions after the patch embedding."""

    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 3):
        super().__init__()
        tokens = (SIZE // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.blocks = nn.Sequential(*[_MixerBlock(tokens, dim, 2 * tokens, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def save_torchscript(model: nn.Module, path: str | Path) -> None:
    """Scripted, in eval mode, with the `doodl.json` metadata `load_torchscript_classifier` reads."""
    scripted = torch.jit.script(model.eval())
    torch.jit.save(scripted, str(path), _extra_files={"doodl.json": json.dumps(METADATA)})
