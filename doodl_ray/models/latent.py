"""What every text-to-image model in a VAE's latent space shares, whatever its network: the latent and image
shapes the VAE and the pipeline's size rules give, decoding with the VAE's own latent normalization, text
encoders that visit the compute device only while they encode, and classifier-free guidance as one batched
pass.

A family adapter (`sd.py`, `sdxl.py`, `sd3.py`, `flux.py`) says how prompts become the network's keyword
arguments (`encode`, batch-first tensors) and how the network is called on one batch (`forward`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput
from doodl_ray.models.base import Diffusion
from doodl_ray.models.inspect import ModelInfo, image_shape, model_info
from doodl_ray.sampling.edict import EpsFn

Conditioning = dict[str, Tensor]  # network keyword arguments, batch first


class LatentDiffusion(Diffusion):
    """A text-conditioned network in a VAE's latent space. Latents are [C, H/s, W/s] for a VAE that downsamples
    by s; text encoders are kept where they were loaded (the CPU on a GPU machine) and moved to the network's
    device only for `encode`."""

    needs_prompt = True
    default_cfg_scale = 7.5

    def __init__(self, network: nn.Module, vae: nn.Module, text_encoders: Sequence[nn.Module | None],
                 tokenizers: Sequence[Any], scheduler_config: dict[str, Any]):
        super().__init__(network, scheduler_config)
        self.vae = vae.eval().requires_grad_(False)
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            self.vae.to(torch.float32)  # this VAE overflows in float16 (SDXL's): its pipeline decodes in float32
        if getattr(self.vae, "_supports_gradient_checkpointing", False):
            self.vae.enable_gradient_checkpointing()
        self.text_encoders = [e.eval().requires_grad_(False) if e is not None else None for e in text_encoders]
        self.tokenizers = list(tokenizers)
        self.info: ModelInfo = model_info(self.family, dict(network.config), dict(vae.config))

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        _, h, w = self.image_shape(height, width)
        scale = self.info.latent_scale
        return int(self.vae.config.latent_channels), h // scale, w // scale

    def image_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        return image_shape(self.info, height, width)

    # conditioning ---------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """The network's text conditioning for these prompts (called inside `encoding()`)."""
        raise NotImplementedError

    def encode_negative(self, count: int) -> Conditioning:
        """The unconditional branch of classifier-free guidance: the empty prompt."""
        return {k: v.expand(count, *v.shape[1:]) for k, v in self.encode([""]).items()}

    def scale_inputs(self, count: int, scale: float | None) -> Conditioning:
        """Network inputs that carry the guidance scale itself (FLUX's guidance embedding); none by default."""
        return {}

    def forward(self, z: Tensor, t: Any, cond: Conditioning) -> Tensor:
        """The network's output on one batch in the schedule's parametrization, in z's dtype."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "LatentDiffusion":
        """The network and the VAE on `device`; the text encoders stay where they are until they encode."""
        self.network.to(device)
        self.vae.to(device)
        return self

    def passes(self, cfg_scale: float | None) -> int:
        return 1 if self.cfg(cfg_scale) == 1.0 else 2

    @contextmanager
    def encoding(self) -> Iterator[None]:
        """The text encoders on the network's device for the block, then back where they were."""
        homes = [next(e.parameters()).device if e is not None else None for e in self.text_encoders]
        try:
            for encoder in self.text_encoders:
                if encoder is not None:
                    encoder.to(self.device)
            yield
        finally:
            for encoder, home in zip(self.text_encoders, homes):
                if encoder is not None:
                    encoder.to(home)

    def condition(
        self, prompts: Sequence[str | None] | None, class_labels: Sequence[int | None] | None,
        cfg_scale: float | None,
    ) -> EpsFn:
        """f(z, t) for one batch; with classifier-free guidance scale w ≠ 1 the unconditional and conditional
        passes run as one batch: f = f(z, t, ∅) + w (f(z, t, c) − f(z, t, ∅))."""
        if prompts is None or any(not p for p in prompts):
            raise InvalidInput("this text-to-image model needs a prompt for every item")
        scale = self.cfg(cfg_scale)
        extra = self.scale_inputs(len(prompts), scale)
        with torch.no_grad(), self.encoding():
            cond = {**self.encode(list(prompts)), **extra}
            uncond = {**self.encode_negative(len(prompts)), **extra} if self.passes(cfg_scale) == 2 else None
        if uncond is None:
            return lambda z, t: self.forward(z, t, cond)
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}

        def eps(z: Tensor, t: Any) -> Tensor:
            uncond_out, cond_out = self.forward(torch.cat([z, z]), t, both).chunk(2)
            return uncond_out + scale * (cond_out - uncond_out)

        return eps

    def tokens(self, tokenizer: Any, prompts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Token ids padded to the tokenizer's (or the given) length, truncated, on the network's device."""
        return tokenizer(
            list(prompts), padding="max_length", max_length=max_length or tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.device)

    # decoding -------------------------------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        """Latents -> image in [-1, 1]: the VAE's latent normalization undone (scaling_factor with shift_factor,
        or per-channel latents_mean/latents_std where the VAE config has them), then its decoder."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            view = (1, -1, *[1] * (z.ndim - 2))
            mean, std = (torch.tensor(v, dtype=z.dtype, device=z.device).view(view) for v in (mean, std))
            latents = z * std / config.scaling_factor + mean
        else:
            latents = z / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
        return self.vae.decode(latents.to(self.vae.dtype)).sample.to(z.dtype)
