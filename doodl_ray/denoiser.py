"""Noise predictors eps(z, t) over diffusers models, bound to one batch's conditioning.

The UNet runs in the model's dtype (bf16/fp16 on GPU); its input is cast down and its output cast back
to the latents' dtype, so the EDICT coupling arithmetic stays in float32 (or float64)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.edict import EpsFn


class Diffusion:
    """What every model offers the sampler: conditioning -> eps function, latents -> image in [-1, 1]."""

    unet: nn.Module
    scheduler_config: dict[str, Any]
    alphas_cumprod: Tensor
    needs_prompt: bool = False

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any]):
        from diffusers import DDIMScheduler

        self.unet = unet.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.alphas_cumprod = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(torch.float64)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def to_epsilon(self, out: Tensor, z: Tensor, t: int) -> Tensor:
        """Convert a v- or x0-prediction to a noise prediction (SD 2.x 768 models predict v)."""
        if self.prediction_type == "epsilon":
            return out
        abar = float(self.alphas_cumprod[t])
        if self.prediction_type == "v_prediction":
            return abar**0.5 * out + (1 - abar) ** 0.5 * z
        if self.prediction_type == "sample":
            return (z - abar**0.5 * out) / (1 - abar) ** 0.5
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")


class LatentTextDiffusion(Diffusion):
    """Stable Diffusion 1.x/2.x layout: text-conditioned UNet2DConditionModel in a VAE's latent space."""

    needs_prompt = True

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler_config):
        super().__init__(unet, scheduler_config)
        self.vae = vae.eval().requires_grad_(False)
        if getattr(self.vae, "_supports_gradient_checkpointing", False):
            self.vae.enable_gradient_checkpointing()
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        native = self.unet.config.sample_size * self.vae_scale
        h, w = height or native, width or native
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"image size {h}x{w} must be a multiple of {self.vae_scale}")
        return self.unet.config.in_channels, h // self.vae_scale, w // self.vae_scale

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def condition(self, prompts: Sequence[str], cfg_scale: float) -> EpsFn:
        """eps~(z, t) = eps(z, t, empty) + w (eps(z, t, c) - eps(z, t, empty)), both passes in one batch."""
        cond = self.embed(prompts)
        if cfg_scale == 1.0:
            return lambda z, t: self._eps(z, t, cond)
        both = torch.cat([self.embed([""]).expand_as(cond), cond])

        def eps(z: Tensor, t: int) -> Tensor:
            uncond_e, cond_e = self._eps(torch.cat([z, z]), t, both).chunk(2)
            return uncond_e + cfg_scale * (cond_e - uncond_e)

        return eps

    def _eps(self, z: Tensor, t: int, states: Tensor) -> Tensor:
        out = self.unet(z.to(self.dtype), t, encoder_hidden_states=states).sample
        return self.to_epsilon(out.to(z.dtype), z, t)

    def decode(self, z: Tensor) -> Tensor:
        image = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype)).sample
        return image.to(z.dtype)


class PixelDiffusion(Diffusion):
    """Pixel-space UNet2DModel, unconditional or class-conditional (`num_class_embeds`)."""

    @property
    def num_classes(self) -> int | None:
        return self.unet.config.num_class_embeds

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        native = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels, height or native[0], width or native[1]

    def condition(self, class_labels: Sequence[int] | None = None) -> EpsFn:
        labels = None
        if self.num_classes:
            if class_labels is None or any(c is None for c in class_labels):
                raise ValueError("this model is class-conditional: every item needs a class label")
            labels = torch.tensor(list(class_labels), device=self.device)

        def eps(z: Tensor, t: int) -> Tensor:
            out = self.unet(z.to(self.dtype), t, class_labels=labels).sample
            return self.to_epsilon(out.to(z.dtype), z, t)

        return eps

    def decode(self, z: Tensor) -> Tensor:
        return z
