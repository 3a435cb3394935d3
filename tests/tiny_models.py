"""Tiny real models built from configs (random weights), saved with save_pretrained and loaded back:
the same loading code paths as real checkpoints, at test size."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from doodl_ray.benchmarks.architectures import build_pipeline, offline_clip_tokenizer

SD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-layout pipeline (UNet2DConditionModel + VAE + CLIP text encoder), ~4M params."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8, sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32,
    ))
    with tempfile.TemporaryDirectory() as vocab_dir:
        pipe = StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer(Path(vocab_dir)),
            scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_family(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny "sdxl", "sd3" or "flux" pipeline (the benchmarks' toy architectures: diffusers' own test configs,
    offline tokenizers, ~2M params), saved with save_pretrained."""
    build_pipeline(family, tiny=True, seed=seed).save_pretrained(folder, safe_serialization=True)
    return folder


def _pixel_unet(channels: int, size: int, num_class_embeds: int | None, widths: tuple[int, ...], seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=widths, down_block_types=("DownBlock2D",) * len(widths),
        up_block_types=("UpBlock2D",) * len(widths), norm_num_groups=4, num_class_embeds=num_class_embeds,
    )


def save_tiny_pixel(folder: Path, channels: int = 3, size: int = 16, num_class_embeds: int | None = None,
                    widths: tuple[int, ...] = (8, 16), seed: int = 0) -> Path:
    """A pixel-space UNet2DModel + DDIM scheduler pipeline (unconditional or class-conditional)."""
    unet = _pixel_unet(channels, size, num_class_embeds, widths, seed)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_pixel_flow(folder: Path, channels: int = 3, size: int = 16, seed: int = 0, **scheduler) -> Path:
    """A bare pixel-space UNet2DModel folder with a flow-matching scheduler config beside it (a velocity model)."""
    _pixel_unet(channels, size, None, (8, 16), seed).save_pretrained(folder, safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**scheduler).save_pretrained(folder)
    return folder


class TinyClassifier(nn.Module):
    """A small CNN over [0, 1] images: conv, pool, linear."""

    def __init__(self, channels: int = 3, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(8 * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def save_tiny_classifier(path: Path, channels: int = 3, classes: int = 10, size: int = 16, seed: int = 0,
                         labels: list[str] | None = None) -> Path:
    """TorchScript classifier with the doodl.json metadata file."""
    torch.manual_seed(seed)
    meta = {"input_size": [size, size], "channels": channels, "mean": [0.5] * channels, "std": [0.5] * channels}
    if labels:
        meta["labels"] = labels
    torch.jit.save(torch.jit.script(TinyClassifier(channels, classes)), str(path), _extra_files={"doodl.json": json.dumps(meta)})
    return path
