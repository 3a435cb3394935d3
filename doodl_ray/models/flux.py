"""FLUX.1 layout: a FluxTransformer2DModel predicting the flow velocity on 2×2 patches of a 16-channel VAE latent,
conditioned as `FluxPipeline` does it: T5's last hidden states (512 tokens) as the context, CLIP's pooled output
as `pooled_projections`, zero text ids and (row, column) image ids, and for guidance-distilled models (FLUX.1-dev)
the guidance scale as an embedding in a single pass: no negative prompt, no second pass. The transformer takes
σ = t/1000; the schedule is the pipeline's: σ grid linspace(1, 1/N, N), shifted by μ from the image's token count.

Latents stay unpacked, [C, H/8, W/8], everywhere outside the network (sampler, noise, decoder, prior): `forward`
packs them into the transformer's [(H/16)(W/16), 4C] tokens and unpacks its output. Packing is a fixed
permutation, so the sampler's steps and their inverses are the same in either layout, and the initial noise is
drawn as the pipeline draws it (unpacked, then packed)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from doodl_ray.models.base import FlowDiffusion
from doodl_ray.models.latent import Conditioning, LatentDiffusion


def pack(z: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], FluxPipeline's `_pack_latents`."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of `pack` for latents of `height` x `width`."""
    b, _, packed = tokens.shape
    c = packed // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(0, row, column) of each 2×2 patch of a latent of `height` x `width`: [(H/2)(W/2), 3]."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device, dtype)


class FluxDiffusion(FlowDiffusion, LatentDiffusion):
    family = "flux"
    default_cfg_scale = 3.5  # FluxPipeline's guidance_scale, FLUX.1-dev's embedded guidance
    max_sequence_length = 512  # T5 tokens, the pipeline's default

    def __init__(self, transformer: nn.Module, vae: nn.Module, text_encoders: Sequence[nn.Module],
                 tokenizers: Sequence[Any], scheduler_config: dict[str, Any]):
        super().__init__(transformer, vae, text_encoders, tokenizers, scheduler_config)

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "FluxDiffusion":
        return cls(pipe.transformer, pipe.vae, [pipe.text_encoder, pipe.text_encoder_2],
                   [pipe.tokenizer, pipe.tokenizer_2], dict(pipe.scheduler.config))

    @property
    def transformer(self) -> nn.Module:
        return self.network

    @property
    def guidance_embeds(self) -> bool:
        """Guidance-distilled (FLUX.1-dev): the scale is an input. Otherwise (FLUX.1-schnell) it is unused."""
        return bool(self.network.config.guidance_embeds)

    def passes(self, cfg_scale: float | None) -> int:
        return 1

    def image_seq_len(self, latent_shape: Sequence[int]) -> int:
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def flow_sigmas(self, steps: int) -> list[float] | None:
        if self.scheduler_config.get("use_flow_sigmas"):
            return None
        return np.linspace(1.0, 1 / steps, steps).tolist()

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        (clip, t5), (clip_tokenizer, t5_tokenizer) = self.text_encoders, self.tokenizers
        pooled = clip(self.tokens(clip_tokenizer, prompts), output_hidden_states=False).pooler_output
        states = t5(self.tokens(t5_tokenizer, prompts, self.max_sequence_length), output_hidden_states=False)[0]
        return {"encoder_hidden_states": states.to(self.dtype), "pooled_projections": pooled.to(self.dtype)}

    def scale_inputs(self, count: int, scale: float | None) -> Conditioning:
        if not self.guidance_embeds:
            return {}
        return {"guidance": torch.full((count,), float(scale), dtype=torch.float32, device=self.device)}

    def forward(self, z: Tensor, t: float, cond: Conditioning) -> Tensor:
        b, _, h, w = z.shape
        timestep = torch.full((b,), t, dtype=self.dtype, device=z.device) / 1000
        text = cond["encoder_hidden_states"]
        out = self.network(
            hidden_states=pack(z.to(self.dtype)), timestep=timestep, img_ids=image_ids(h, w, z.device, self.dtype),
            txt_ids=text.new_zeros(text.shape[1], 3), **cond,
        ).sample
        return unpack(out, h, w).to(z.dtype)
