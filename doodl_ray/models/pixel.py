"""Pixel-space UNet2DModel, unconditional or class-conditional (`num_class_embeds`): the image is the latent.
Trained with DDPM (noise, v or x0 prediction) or, with a FlowMatchEulerDiscreteScheduler config, rectified flow."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from doodl_ray.models.base import Diffusion, FlowDiffusion
from doodl_ray.sampling.edict import EpsFn


class PixelDiffusion(Diffusion):
    family = "pixel"

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "PixelDiffusion":
        return cls(pipe.unet, dict(pipe.scheduler.config))

    @property
    def unet(self) -> torch.nn.Module:
        return self.network

    @property
    def num_classes(self) -> int | None:
        return self.network.config.num_class_embeds

    def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        size = self.network.config.sample_size
        native = (size, size) if isinstance(size, int) else tuple(size)
        return self.network.config.in_channels, height or native[0], width or native[1]

    def image_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        return self.latent_shape(height, width)

    def condition(
        self, prompts: Sequence[str | None] | None, class_labels: Sequence[int | None] | None,
        cfg_scale: float | None,
    ) -> EpsFn:
        labels = None
        if self.num_classes:
            if class_labels is None or any(c is None for c in class_labels):
                raise ValueError("this model is class-conditional: every item needs a class label")
            labels = torch.tensor(list(class_labels), device=self.device)

        def eps(z: Tensor, t: int) -> Tensor:
            out = self.network(z.to(self.dtype), t, class_labels=labels).sample
            return self.model_output(out.to(z.dtype), z, t)

        return eps

    def decode(self, z: Tensor) -> Tensor:
        return z


class PixelFlowDiffusion(FlowDiffusion, PixelDiffusion):
    """A pixel-space UNet2DModel trained by flow matching: it predicts the velocity, called at t = σ·T."""

    family = "pixel-flow"
