"""Stable Diffusion XL (base) layout: a UNet2DConditionModel with `text_time` added conditioning, two CLIP text
encoders, conditioned as `StableDiffusionXLPipeline` does it: the two encoders' penultimate hidden states
concatenated as the cross-attention context, the second encoder's projected pooled output as `text_embeds`,
and `time_ids` = (original size, crop top-left, target size) = (H, W, 0, 0, H, W) of the generated image. With
the pipeline's `force_zeros_for_empty_prompt` (SDXL base's default) the unconditional branch is all zeros.

EDICT runs DDIM (η = 0) at the timesteps of the model's own scheduler config (the base ships Euler's; DDIM and
Euler discretize the same probability-flow ODE)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.models.latent import Conditioning, LatentDiffusion


class SDXLDiffusion(LatentDiffusion):
    family = "sdxl"
    default_cfg_scale = 5.0  # StableDiffusionXLPipeline's

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoders: Sequence[nn.Module | None],
                 tokenizers: Sequence[Any], scheduler_config: dict[str, Any], force_zeros_for_empty_prompt: bool = True):
        super().__init__(unet, vae, text_encoders, tokenizers, scheduler_config)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "SDXLDiffusion":
        return cls(pipe.unet, pipe.vae, [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2],
                   dict(pipe.scheduler.config), pipe.config.force_zeros_for_empty_prompt)

    @property
    def unet(self) -> nn.Module:
        return self.network

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        states, pooled = [], None
        for encoder, tokenizer in zip(self.text_encoders, self.tokenizers):
            if encoder is None:  # a pipeline saved without its first encoder uses the second alone
                continue
            out = encoder(self.tokens(tokenizer, prompts), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the projected pooled output (CLIPTextModelWithProjection)
                pooled = out[0]
            states.append(out.hidden_states[-2])
        if pooled is None:
            raise ValueError("SDXL needs a text encoder with a projected pooled output (text_encoder_2)")
        return {"encoder_hidden_states": torch.cat(states, dim=-1).to(self.dtype), "text_embeds": pooled.to(self.dtype)}

    def encode_negative(self, count: int) -> Conditioning:
        negative = super().encode_negative(count)
        if self.force_zeros_for_empty_prompt:
            return {k: torch.zeros_like(v) for k, v in negative.items()}
        return negative

    def forward(self, z: Tensor, t: int, cond: Conditioning) -> Tensor:
        h, w = (side * self.info.latent_scale for side in z.shape[-2:])
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=z.device).expand(z.shape[0], 6)
        added = {"text_embeds": cond["text_embeds"], "time_ids": time_ids}
        out = self.network(z.to(self.dtype), t, encoder_hidden_states=cond["encoder_hidden_states"],
                           added_cond_kwargs=added).sample
        return self.model_output(out.to(z.dtype), z, t)
