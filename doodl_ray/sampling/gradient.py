"""Gradient of a loss on the final latents with respect to the initial noise, through the whole EDICT chain,
without storing the chain's activations (memory flat in the number of steps).

`chain_loss(z0) -> (loss [B], image)` is evaluated on each chain's final latents in turn; the DOODL loss
is the sum over both chains. Three ways to get the same gradient:
- `checkpoint`: keep each step's input latents in the forward pass, recompute the step with grad backward;
- `reversible`: recover each step's input by EDICT inversion; one UNet evaluation per half-step serves
  both the inversion and the vector-Jacobian product (memory O(1) in steps);
- `autograd`: plain autograd through the unrolled chain (memory O(steps)); the reference for tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from doodl_ray.sampling.edict import EpsFn, edict_step, swapped, unmix
from doodl_ray.sampling.schedule import Schedule

ChainLoss = Callable[[Tensor], tuple[Tensor, Tensor]]
Mode = Literal["checkpoint", "reversible", "autograd"]


@dataclass
class ChainGradient:
    loss: Tensor  # [B], both chains summed, detached
    grad: Tensor  # dL/dz_T for the tied initial latents
    image: Tensor  # the x chain's decoded image, detached
    x0: Tensor
    y0: Tensor


@dataclass
class ForwardPass:
    """The no-grad forward chain from tied initial latents, kept for the backward pass."""

    x0: Tensor
    y0: Tensor
    mode: Mode
    inputs: list[tuple[Tensor, Tensor]]  # checkpoint mode: each step's input latents

    def select(self, rows: Tensor | list[int]) -> "ForwardPass":
        """The same pass for a subset of the batch (items that go on while others stopped)."""
        pick = lambda t: t[rows]  # noqa: E731
        return ForwardPass(pick(self.x0), pick(self.y0), self.mode, [(pick(x), pick(y)) for x, y in self.inputs])


def chain_forward(
    z: Tensor, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool = True, mode: Mode = "checkpoint"
) -> ForwardPass:
    """Run EDICT from x_T = y_T = z without grad; checkpoint mode stores each step's inputs."""
    inputs: list[tuple[Tensor, Tensor]] = []
    x, y = z, z
    with torch.no_grad():
        for k in range(len(schedule)):
            if mode == "checkpoint":
                inputs.append((x, y))
            x, y = edict_step(x, y, k, schedule, eps, p, leapfrog)
    return ForwardPass(x, y, mode, inputs)


def chain_backward(
    forward: ForwardPass, schedule: Schedule, eps: EpsFn, chain_loss: ChainLoss, p: float, leapfrog: bool = True
) -> ChainGradient:
    """dL/dz for L = chain_loss(x_0) + chain_loss(y_0), back through the chain `forward` ran."""
    inputs = list(forward.inputs)
    loss_x, gx, image = _loss_and_adjoint(chain_loss, forward.x0)
    loss_y, gy, _ = _loss_and_adjoint(chain_loss, forward.y0)
    x, y = forward.x0, forward.y0
    for k in reversed(range(len(schedule))):
        if forward.mode == "checkpoint":
            x, y, gx, gy = _checkpoint_backward_step(*inputs.pop(), gx, gy, k, schedule, eps, p, leapfrog)
        else:
            x, y, gx, gy = _reversible_backward_step(x, y, gx, gy, k, schedule, eps, p, leapfrog)
    return ChainGradient(loss_x + loss_y, gx + gy, image, forward.x0, forward.y0)


def chain_gradient(
    z: Tensor, schedule: Schedule, eps: EpsFn, chain_loss: ChainLoss, p: float, leapfrog: bool = True,
    mode: Mode = "checkpoint",
) -> ChainGradient:
    """dL/dz for x_T = y_T = z, L = chain_loss(x_0) + chain_loss(y_0)."""
    if mode == "autograd":
        return _autograd(z, schedule, eps, chain_loss, p, leapfrog)
    return chain_backward(chain_forward(z, schedule, eps, p, leapfrog, mode), schedule, eps, chain_loss, p, leapfrog)


def _loss_and_adjoint(chain_loss: ChainLoss, z0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        z0 = z0.detach().requires_grad_(True)
        loss, image = chain_loss(z0)
        (grad,) = torch.autograd.grad(loss.sum(), z0)
    return loss.detach(), grad, image.detach()


def _checkpoint_backward_step(x, y, gx, gy, k, schedule, eps, p, leapfrog):
    """Recompute step k from its stored inputs with grad, and pull the adjoints through it."""
    with torch.enable_grad():
        x, y = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        out = edict_step(x, y, k, schedule, eps, p, leapfrog)
        gx_in, gy_in = torch.autograd.grad(out, (x, y), (gx, gy))
    return x.detach(), y.detach(), gx_in, gy_in


def _reversible_backward_step(x, y, gx, gy, k, schedule, eps, p, leapfrog):
    """Invert step k from its outputs and pull the adjoints through it, by hand.

    Forward: u1 = a u + b e(v); v1 = a v + b e(u1); x' = p x1 + (1-p) y1; y' = p y1 + (1-p) x'."""
    t, a, b = schedule.timesteps[k], float(schedule.a[k]), float(schedule.b[k])
    gx = gx + (1 - p) * gy  # x' also feeds y'
    gx, gy = p * gx, p * gy + (1 - p) * gx
    x, y = unmix(x, y, p)
    swap = swapped(k, leapfrog)
    (u1, v1), (gu, gv) = ((y, x), (gy, gx)) if swap else ((x, y), (gx, gy))
    e2, vjp2 = _eps_and_vjp(eps, u1, t, gv)
    v = (v1 - b * e2) / a
    gu, gv = gu + b * vjp2, a * gv
    e1, vjp1 = _eps_and_vjp(eps, v, t, gu)
    u = (u1 - b * e1) / a
    gu, gv = a * gu, gv + b * vjp1
    return (v, u, gv, gu) if swap else (u, v, gu, gv)


def _eps_and_vjp(eps: EpsFn, z: Tensor, t: int, g: Tensor) -> tuple[Tensor, Tensor]:
    """One UNet evaluation gives both the prediction (for inversion) and its VJP with g."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        e = eps(z, t)
        (vjp,) = torch.autograd.grad(e, z, g)
    return e.detach(), vjp


def _autograd(z, schedule, eps, chain_loss, p, leapfrog) -> ChainGradient:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        x, y = z, z
        for k in range(len(schedule)):
            x, y = edict_step(x, y, k, schedule, eps, p, leapfrog)
        loss_x, image = chain_loss(x)
        loss_y, _ = chain_loss(y)
        loss = loss_x + loss_y
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return ChainGradient(loss.detach(), grad, image.detach(), x.detach(), y.detach())
