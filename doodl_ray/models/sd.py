"""Stable Diffusion 1.x/2.x layout: a text-conditioned UNet2DConditionModel in a VAE's latent space, one CLIP
text encoder whose last hidden states are the cross-attention context."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from doodl_ray.models.latent import Conditioning, LatentDiffusion


class LatentTextDiffusion(LatentDiffusion):
    family = "sd"

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler_config):
        super().__init__(unet, vae, [text_encoder], [tokenizer], scheduler_config)

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "LatentTextDiffusion":
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config))

    @property
    def unet(self) -> nn.Module:
        return self.network

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        (encoder,), (tokenizer,) = self.text_encoders, self.tokenizers
        return {"encoder_hidden_states": encoder(self.tokens(tokenizer, prompts))[0].to(self.dtype)}

    def forward(self, z: Tensor, t: int, cond: Conditioning) -> Tensor:
        out = self.network(z.to(self.dtype), t, **cond).sample
        return self.model_output(out.to(z.dtype), z, t)
