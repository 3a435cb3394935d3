"""One-step classifier guidance: the baseline DOODL is measured against, in the same sampler.

At each noise prediction, estimate the clean image x0 = (z - sqrt(1 - abar_t) eps) / sqrt(abar_t) in one
step, decode it, and push the prediction along the guidance gradient:
eps_hat = eps + s sqrt(1 - abar_t) grad_z loss(decode(x0)). The gradient goes through the UNet too.
With `normalize`, the gradient is scaled to unit RMS per image: the raw gradient grows like 1/sqrt(abar_t)
at high noise, so an unnormalized scale that works late in sampling explodes early."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from doodl_ray.doodl import images01, unit_rms
from doodl_ray.edict import EpsFn


def one_step_guided_eps(
    eps: EpsFn, decode: Callable[[Tensor], Tensor], alphas_cumprod: Tensor, loss: Callable[[Tensor], Tensor],
    scale: float, normalize: bool,
) -> EpsFn:
    """Wrap `eps` with one-step (x0-estimate) guidance by `loss(images01) -> [B]`."""

    def guided(z: Tensor, t: int) -> Tensor:
        abar = float(alphas_cumprod[t])
        with torch.enable_grad():
            z_leaf = z.detach().requires_grad_(True)
            e = eps(z_leaf, t)
            x0 = (z_leaf - (1 - abar) ** 0.5 * e) / abar**0.5
            (grad,) = torch.autograd.grad(loss(images01(decode(x0))).sum(), z_leaf)
        if normalize:
            grad = unit_rms(grad)
        return e.detach() + scale * (1 - abar) ** 0.5 * grad

    return guided
