"""Stable Diffusion 3.x layout: an SD3Transformer2DModel (MMDiT) predicting the flow velocity in a 16-channel VAE
latent space, conditioned as `StableDiffusion3Pipeline` does it: the penultimate hidden states of CLIP-L and
CLIP-G concatenated, zero-padded to T5's width and followed by T5's last hidden states (256 tokens) as the joint
context, and the two CLIP projections concatenated as `pooled_projections`. Without T5 (a pipeline loaded with
`text_encoder_3=None`) its part of the context is zeros, as there. The transformer takes t = σ·1000."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doodl_ray.models.base import FlowDiffusion
from doodl_ray.models.latent import Conditioning, LatentDiffusion


class SD3Diffusion(FlowDiffusion, LatentDiffusion):
    family = "sd3"
    default_cfg_scale = 7.0  # StableDiffusion3Pipeline's
    max_sequence_length = 256  # T5 tokens, the pipeline's default

    def __init__(self, transformer: nn.Module, vae: nn.Module, text_encoders: Sequence[nn.Module | None],
                 tokenizers: Sequence[Any], scheduler_config: dict[str, Any]):
        super().__init__(transformer, vae, text_encoders, tokenizers, scheduler_config)

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "SD3Diffusion":
        return cls(pipe.transformer, pipe.vae, [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3],
                   [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3], dict(pipe.scheduler.config))

    @property
    def transformer(self) -> nn.Module:
        return self.network

    def image_seq_len(self, latent_shape: Sequence[int]) -> int:
        patch = self.network.config.patch_size
        return (latent_shape[-2] // patch) * (latent_shape[-1] // patch)

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        clip_length = self.tokenizers[0].model_max_length  # the pipeline pads both CLIPs to the first's length
        states, pooled = [], []
        for encoder, tokenizer in zip(self.text_encoders[:2], self.tokenizers[:2]):
            out = encoder(self.tokens(tokenizer, prompts, clip_length), output_hidden_states=True)
            pooled.append(out[0])
            states.append(out.hidden_states[-2])
        clip = torch.cat(states, dim=-1)
        t5_encoder, t5_tokenizer = self.text_encoders[2], self.tokenizers[2]
        if t5_encoder is None:
            t5 = clip.new_zeros(len(prompts), self.max_sequence_length, self.network.config.joint_attention_dim)
        else:
            t5 = t5_encoder(self.tokens(t5_tokenizer, prompts, self.max_sequence_length))[0]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5.to(clip.dtype)], dim=-2).to(self.dtype),
                "pooled_projections": torch.cat(pooled, dim=-1).to(self.dtype)}

    def forward(self, z: Tensor, t: float, cond: Conditioning) -> Tensor:
        timestep = torch.full((z.shape[0],), t, dtype=torch.float32, device=z.device)
        return self.network(hidden_states=z.to(self.dtype), timestep=timestep, **cond).sample.to(z.dtype)
