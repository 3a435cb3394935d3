"""Tiny guidance models built from configs (random weights) and saved the way real ones are shipped:
open_clip architectures registered like built-ins, pretrained tags with their own preprocessing, hub-layout
folders, aesthetic predictor state dicts, timm/torchvision checkpoints and a transformers folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from doodl_ray.guidance.aesthetic import AestheticMLP

EMBED = 32
ARCH_A = "tiny-clip-a"  # 32 px input
ARCH_B = "tiny-clip-b"  # 24 px input: a second model with its own size
TAG = "tinylaion"  # a registered pretrained tag with non-OpenAI normalization
TAG_MEAN, TAG_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def clip_arch(image_size: int) -> dict:
    return {
        "embed_dim": EMBED,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def register_tiny_clips(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Register ARCH_A/ARCH_B as open_clip architectures, save a checkpoint for each, and register TAG
    for ARCH_A (pointing at its checkpoint, with TAG_MEAN/TAG_STD). Returns {arch: checkpoint}."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = {}
    for offset, (arch, size) in enumerate([(ARCH_A, 32), (ARCH_B, 24)]):
        (folder / f"{arch}.json").write_text(json.dumps(clip_arch(size)))
        open_clip.add_model_config(folder / f"{arch}.json")
        torch.manual_seed(seed + offset)
        model = open_clip.create_model(arch)
        checkpoints[arch] = folder / f"{arch}.safetensors"
        save_file(model.state_dict(), str(checkpoints[arch]))
    open_clip.pretrained._PRETRAINED.setdefault(ARCH_A, {})[TAG] = {
        "file": str(checkpoints[ARCH_A]), "mean": TAG_MEAN, "std": TAG_STD,
    }  # fmt: skip
    return checkpoints


def save_clip_folder(folder: Path, checkpoint: Path, mean: tuple, std: tuple, image_size: int = 32, **preprocess) -> Path:
    """An open_clip hub-layout folder: open_clip_config.json (model + preprocess cfg, e.g. resize_mode) and the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": clip_arch(image_size), "preprocess_cfg": {"mean": list(mean), "std": list(std), **preprocess}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    (folder / "open_clip_model.safetensors").write_bytes(checkpoint.read_bytes())
    return folder


def save_aesthetic(path: Path, version: str = "v2", dim: int = EMBED, seed: int = 0, bias: float = 0.0) -> Path:
    """A LAION-layout aesthetic predictor state dict (v1: Linear; v2: the MLP), .safetensors or .pth."""
    torch.manual_seed(seed)
    head = AestheticMLP(dim) if version == "v2" else nn.Linear(dim, 1)
    with torch.no_grad():
        (head.layers[-1] if version == "v2" else head).bias.fill_(bias)
    state = head.state_dict()
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def save_timm(path: Path, classes: int = 5, seed: int = 0) -> Path:
    """timm's `test_resnet` (its own 160 px input, mean = std = 0.5) with a `classes`-way head."""
    import timm

    torch.manual_seed(seed)
    save_file(timm.create_model("test_resnet", pretrained=False, num_classes=classes).state_dict(), str(path))
    return path


def save_torchvision(path: Path, classes: int = 4, seed: int = 0) -> Path:
    """torchvision `mobilenet_v3_small` with a `classes`-way head, as a plain state dict."""
    import torchvision

    torch.manual_seed(seed)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=classes).state_dict(), path)
    return path


HF_LABELS = ["cardinal", "blue jay", "goldfinch"]
HF_MEAN, HF_STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


def save_hf_classifier(folder: Path, seed: int = 0) -> Path:
    """A tiny ViTForImageClassification + ViTImageProcessor (24 px, HF_MEAN/HF_STD), save_pretrained layout."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=len(HF_LABELS), id2label=dict(enumerate(HF_LABELS)),
        label2id={name: i for i, name in enumerate(HF_LABELS)},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=list(HF_MEAN), image_std=list(HF_STD)).save_pretrained(folder)
    return folder


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A solid-colour PNG, encoded."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()
