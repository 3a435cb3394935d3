"""Stable Diffusion 1.x/2.x layout: a text-conditioned UNet2DConditionModel in a VAE's latent space."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.models.base import Diffusion
from doodl_ray.sampling.edict import EpsFn


class LatentTextDiffusion(Diffusion):
    family = "sd"
    needs_prompt = True

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler_config):
        super().__init__(unet, scheduler_config)
        self.vae = vae.eval().requires_grad_(False)
        if getattr(self.vae, "_supports_gradient_checkpointing", False):
            self.vae.enable_gradient_checkpointing()
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def unet(self) -> nn.Module:
        return self.network

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        native = self.network.config.sample_size * self.vae_scale
        h, w = height or native, width or native
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"image size {h}x{w} must be a multiple of {self.vae_scale}")
        return self.network.config.in_channels, h // self.vae_scale, w // self.vae_scale

    def image_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        _, h, w = self.latent_shape(height, width)
        return self.vae.config.out_channels, h * self.vae_scale, w * self.vae_scale

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def passes(self, cfg_scale: float) -> int:
        return 1 if cfg_scale == 1.0 else 2

    def condition(
        self, prompts: Sequence[str | None] | None, class_labels: Sequence[int | None] | None, cfg_scale: float
    ) -> EpsFn:
        """eps~(z, t) = eps(z, t, empty) + w (eps(z, t, c) - eps(z, t, empty)), both passes in one batch."""
        if prompts is None or any(not p for p in prompts):
            raise ValueError("this text-to-image model needs a prompt for every item")
        cond = self.embed(prompts)
        if cfg_scale == 1.0:
            return lambda z, t: self._eps(z, t, cond)
        both = torch.cat([self.embed([""]).expand_as(cond), cond])

        def eps(z: Tensor, t: int) -> Tensor:
            uncond_e, cond_e = self._eps(torch.cat([z, z]), t, both).chunk(2)
            return uncond_e + cfg_scale * (cond_e - uncond_e)

        return eps

    def _eps(self, z: Tensor, t: int, states: Tensor) -> Tensor:
        out = self.network(z.to(self.dtype), t, encoder_hidden_states=states).sample
        return self.to_epsilon(out.to(z.dtype), z, t)

    def decode(self, z: Tensor) -> Tensor:
        image = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype)).sample
        return image.to(z.dtype)
