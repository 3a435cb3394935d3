"""What every diffusion model offers the samplers and methods, whatever its family.

A model adapter binds one batch's conditioning into `eps(z, t)` (the model output the schedule expects:
noise for DDIM-family models, velocity for flow models), decodes latents to images in [-1, 1], and says
how it was trained (`training_pair`, for the diffusion prior). The network runs in the model's dtype
(bf16/fp16 on GPU); its input is cast down and its output cast back to the latents' dtype, so the coupling
arithmetic stays in float32 (or float64)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.sampling.edict import EpsFn
from doodl_ray.sampling.schedule import Schedule, ddim_schedule


class Diffusion:
    """Base adapter for noise-predicting (DDPM/DDIM-trained) models; flow models override `schedule` and
    `training_pair`."""

    family: str = "diffusion"
    network: nn.Module  # the denoising network (UNet or transformer)
    scheduler_config: dict[str, Any]
    needs_prompt: bool = False

    def __init__(self, network: nn.Module, scheduler_config: dict[str, Any]):
        from diffusers import DDIMScheduler

        self.network = network.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.alphas_cumprod = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(torch.float64)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, ...]:
        raise NotImplementedError

    def image_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        """(C, H, W) of the decoded images: what a guidance model will be given."""
        raise NotImplementedError

    def schedule(self, steps: int, latent_shape: Sequence[int]) -> Schedule:
        """The deterministic sampling schedule for `steps` steps, from the model's own scheduler config."""
        return ddim_schedule(self.scheduler_config, steps)

    def condition(
        self, prompts: Sequence[str | None] | None, class_labels: Sequence[int | None] | None, cfg_scale: float
    ) -> EpsFn:
        """eps(z, t) for one batch, item i conditioned on prompts[i] / class_labels[i]."""
        raise NotImplementedError

    def passes(self, cfg_scale: float) -> int:
        """Network passes per item in one `eps` call (2 with classifier-free guidance): the unit of compute."""
        return 1

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def training_pair(self, z0: Tensor, noise: Tensor, level: float) -> tuple[Tensor, Any, Tensor]:
        """(noisy latents, model timestep, the output the model was trained to predict) at a noise level in
        (0, 1), a fraction of the training timesteps: DDPM's q(z_t | z_0) and the noise."""
        train_steps = len(self.alphas_cumprod)
        t = min(train_steps - 1, round(level * train_steps))
        abar = float(self.alphas_cumprod[t])
        return abar**0.5 * z0 + (1 - abar) ** 0.5 * noise, t, noise

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
