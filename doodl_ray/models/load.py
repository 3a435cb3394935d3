"""Load a diffusion model by reference: a hub id, a local diffusers folder, or an s3:// (any fsspec) folder.

Only safetensors weights are accepted (never unpickle). A pipeline folder (`model_index.json`) gives a
Stable-Diffusion-layout latent model or a pixel UNet2DModel pipeline; a bare UNet2DModel folder
(`config.json`) gets the scheduler config beside it (`scheduler_config.json`) or DDPM's default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from doodl_ray.models.base import Diffusion
from doodl_ray.models.pixel import PixelDiffusion
from doodl_ray.models.sd import LatentTextDiffusion
from doodl_ray.errors import ModelLoadError
from doodl_ray.fetch import is_remote, local_copy

DEFAULT_PIXEL_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                           "beta_end": 0.02, "clip_sample": False}


def load_diffusion(
    ref: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    storage_options: dict[str, Any] | None = None,
) -> Diffusion:
    """Load, freeze and place a model; raise ModelLoadError with one clear line if `ref` is not one."""
    path = local_copy(ref, storage_options) if is_remote(ref) else ref
    folder = Path(path)
    try:
        if folder.is_dir() and not (folder / "model_index.json").exists():
            return _bare_unet(folder, device, dtype)
        return _load_pipeline(path, device, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:
        kind = "folder" if folder.exists() else "hub id or path"
        raise ModelLoadError(f"{ref} is not a loadable diffusers model {kind}: {_first_line(exc)}") from None


def _load_pipeline(path: str, device: torch.device | str, dtype: torch.dtype) -> Diffusion:
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(path)
    extra = {"safety_checker": None} if "safety_checker" in index else {}
    pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, use_safetensors=True, **extra).to(device)
    scheduler = dict(pipe.scheduler.config)
    if getattr(pipe, "vae", None) is not None and getattr(pipe, "text_encoder", None) is not None:
        return LatentTextDiffusion(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler)
    if getattr(pipe, "unet", None) is not None and type(pipe.unet).__name__ == "UNet2DModel":
        return PixelDiffusion(pipe.unet, scheduler)
    raise ModelLoadError(f"{path}: {type(pipe).__name__} is neither a latent text-to-image nor a pixel UNet pipeline")


def _bare_unet(folder: Path, device: torch.device | str, dtype: torch.dtype) -> Diffusion:
    from diffusers import UNet2DModel

    config = folder / "config.json"
    if not config.exists() or json.loads(config.read_text()).get("_class_name") != "UNet2DModel":
        raise ModelLoadError(f"{folder} has neither model_index.json nor a UNet2DModel config.json")
    unet = UNet2DModel.from_pretrained(folder, dtype=dtype, use_safetensors=True).to(device)
    scheduler_file = folder / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else DEFAULT_PIXEL_SCHEDULER
    return PixelDiffusion(unet, scheduler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
