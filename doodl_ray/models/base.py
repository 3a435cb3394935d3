"""What every diffusion model offers the samplers and methods, whatever its family.

A model adapter binds one batch's conditioning into `eps(z, t)` (the model output the schedule expects:
noise for DDIM-family models, velocity for flow models), decodes latents to images in [-1, 1], and says
how it was trained (`training_pair`, for the diffusion prior). The network runs in the model's dtype
(bf16/fp16 on GPU); its input is cast down and its output cast back to the latents' dtype, so the coupling
arithmetic stays in float32 (or float64)."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.sampling.edict import EpsFn
from doodl_ray.sampling.flow import flow_schedule, flow_training_pair
from doodl_ray.sampling.schedule import Schedule, ddim_schedule


class Diffusion:
    """Base adapter for noise-predicting (DDPM/DDIM-trained) models; `FlowDiffusion` for velocity-predicting ones."""

    family: str = "diffusion"
    network: nn.Module  # the denoising network (UNet or transformer)
    scheduler_config: dict[str, Any]
    needs_prompt: bool = False
    default_cfg_scale: float | None = None  # the guidance scale a `cfg_scale` of None means (text models)

    def __init__(self, network: nn.Module, scheduler_config: dict[str, Any]):
        self.network = network.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(torch.float64)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def to(self, device: torch.device | str) -> "Diffusion":
        """The model's modules that sample on `device`."""
        self.network.to(device)
        return self

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
        self, prompts: Sequence[str | None] | None, class_labels: Sequence[int | None] | None,
        cfg_scale: float | None,
    ) -> EpsFn:
        """eps(z, t) for one batch, item i conditioned on prompts[i] / class_labels[i]; `cfg_scale` None is the
        model's own default (`default_cfg_scale`)."""
        raise NotImplementedError

    def passes(self, cfg_scale: float | None) -> int:
        """Network passes per item in one `eps` call (2 with classifier-free guidance): the unit of compute."""
        return 1

    def cfg(self, cfg_scale: float | None) -> float | None:
        """The guidance scale to use: the one given, or the model's default."""
        return self.default_cfg_scale if cfg_scale is None else cfg_scale

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def training_pair(self, z0: Tensor, noise: Tensor, level: float) -> tuple[Tensor, Any, Tensor]:
        """(noisy latents, model timestep, the output the model was trained to predict) at a noise level in
        (0, 1), a fraction of the training timesteps: DDPM's q(z_t | z_0) and the noise."""
        train_steps = len(self.alphas_cumprod)
        t = min(train_steps - 1, round(level * train_steps))
        abar = float(self.alphas_cumprod[t])
        return abar**0.5 * z0 + (1 - abar) ** 0.5 * noise, t, noise

    def model_output(self, out: Tensor, z: Tensor, t: int) -> Tensor:
        """The network output in the schedule's parametrization: here the noise, converted from a v- or
        x0-prediction (SD 2.x 768 models predict v)."""
        if self.prediction_type == "epsilon":
            return out
        abar = float(self.alphas_cumprod[t])
        if self.prediction_type == "v_prediction":
            return abar**0.5 * out + (1 - abar) ** 0.5 * z
        if self.prediction_type == "sample":
            return (z - abar**0.5 * out) / (1 - abar) ** 0.5
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")


class FlowDiffusion(Diffusion):
    """Rectified-flow models (FlowMatchEulerDiscreteScheduler): `eps` is the velocity, the schedule the Euler steps
    of the flow ODE at the scheduler's own levels (`sampling/flow.py`), the training pair flow matching's.
    Family adapters say how many image tokens a latent holds (for resolution-dependent shifts) and which σ grid
    their pipeline passes the scheduler, if any."""

    def schedule(self, steps: int, latent_shape: Sequence[int]) -> Schedule:
        return flow_schedule(self.scheduler_config, steps, self.image_seq_len(latent_shape), self.flow_sigmas(steps))

    def image_seq_len(self, latent_shape: Sequence[int]) -> int | None:
        """Image tokens per latent of this shape (what a dynamic shift depends on); None: not a token model."""
        return None

    def flow_sigmas(self, steps: int) -> list[float] | None:
        """The unshifted σ grid the model's pipeline gives its scheduler; None: the scheduler's own."""
        return None

    @property
    def train_steps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def training_pair(self, z0: Tensor, noise: Tensor, level: float) -> tuple[Tensor, Any, Tensor]:
        """(z_σ, timestep, velocity target) at σ = level: ((1 − σ) z0 + σ n, σ·T, n − z0)."""
        return flow_training_pair(z0, noise, level, self.train_steps)

    def model_output(self, out: Tensor, z: Tensor, t: Any) -> Tensor:
        """A flow network's output is already the velocity the schedule steps with."""
        return out
