"""Load a diffusion model by reference: a hub id, a local diffusers folder, or an s3:// (any fsspec) folder.

The family comes from `model_index.json` (models.families) before any weights are read, so an unsupported
pipeline is one line naming the supported ones. Only safetensors weights are accepted (never unpickle); a folder
or hub repo whose weights are the `fp16` variant (`*.fp16.safetensors`) loads them, and prefers them over full
precision ones when the model runs in 16 bits. Weights load on the CPU in the engine's dtype (accelerate's
low-memory path), then the network and VAE move to the device; text encoders stay on the CPU and visit the
device only to encode (`latent.LatentDiffusion.encoding`). A bare UNet2DModel folder (`config.json`) gets the
scheduler config beside it (`scheduler_config.json`, DDPM-family or flow matching) or DDPM's default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from doodl_ray.errors import ModelLoadError
from doodl_ray.fetch import is_remote, local_copy
from doodl_ray.models.base import Diffusion
from doodl_ray.models.families import family_of, supported_families
from doodl_ray.models.pixel import PixelDiffusion, PixelFlowDiffusion
from doodl_ray.sampling.flow import is_flow

DEFAULT_PIXEL_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                           "beta_end": 0.02, "clip_sample": False}
HALF = (torch.float16, torch.bfloat16)


def load_diffusion(
    ref: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    storage_options: dict[str, Any] | None = None,
) -> Diffusion:
    """Load, freeze and place a model; raise ModelLoadError with one clear line if `ref` is not one."""
    path = local_copy(ref, storage_options) if is_remote(ref) else ref
    folder = Path(path)
    try:
        if folder.is_dir() and not (folder / "model_index.json").exists():
            return _bare_unet(folder, dtype).to(device)
        return _load_pipeline(path, dtype).to(device)
    except ModelLoadError:
        raise
    except Exception as exc:
        kind = "folder" if folder.exists() else "hub id or path"
        raise ModelLoadError(f"{ref} is not a loadable diffusers model {kind}: {_first_line(exc)}") from None


def _load_pipeline(path: str, dtype: torch.dtype) -> Diffusion:
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(path)
    family = family_of(index.get("_class_name", ""))
    if family is None:
        raise ModelLoadError(f"{path}: {index.get('_class_name')!r} is not a supported family "
                             f"(supported: {supported_families()})")
    extra = {"safety_checker": None} if "safety_checker" in index else {}
    pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                             variant=weight_variant(_weight_files(path), dtype), **extra)
    return family.adapter_class().from_pipeline(pipe)


def weight_variant(files: Iterable[str] | None, dtype: torch.dtype) -> str | None:
    """"fp16" when the weights include the fp16 variant and either the model runs in 16 bits or there are no
    others; None (the full-precision files) otherwise, or when the file list is unknown."""
    names = [Path(f).name for f in files or () if f.endswith(".safetensors")]
    half = [n for n in names if ".fp16." in n or ".fp16-" in n]
    if not half:
        return None
    return "fp16" if dtype in HALF or len(half) == len(names) else None


def _weight_files(path: str) -> list[str] | None:
    """The files of a local folder or hub repo; None when they cannot be listed (offline hub)."""
    folder = Path(path)
    if folder.is_dir():
        return [str(p.relative_to(folder)) for p in folder.rglob("*.safetensors")]
    from huggingface_hub import list_repo_files

    try:
        return list_repo_files(path)
    except Exception:  # offline, unknown repo or network: from_pretrained reports it in its own words
        return None


def _bare_unet(folder: Path, dtype: torch.dtype) -> Diffusion:
    from diffusers import UNet2DModel

    config = folder / "config.json"
    if not config.exists() or json.loads(config.read_text()).get("_class_name") != "UNet2DModel":
        raise ModelLoadError(f"{folder} has neither model_index.json nor a UNet2DModel config.json")
    unet = UNet2DModel.from_pretrained(folder, dtype=dtype, use_safetensors=True,
                                       variant=weight_variant(_weight_files(str(folder)), dtype))
    scheduler_file = folder / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else DEFAULT_PIXEL_SCHEDULER
    return (PixelFlowDiffusion if is_flow(scheduler) else PixelDiffusion)(unet, scheduler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
