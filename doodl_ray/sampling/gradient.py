"""Gradient of a loss on the final latents with respect to the initial noise, through the whole sampler, without
storing the sampler's activations (memory flat in the number of steps).

Two samplers render an image from the noise z:
- `chain`: the standard single chain (`chain.py`: DDIM, or the flow ODE's Euler steps), one network pass per step;
  the sampler every other method and the model's own pipeline use, so what DOODL optimizes is what they render;
- `edict`: EDICT's two coupled chains (`edict.py`), two passes per step, exactly invertible; the DOODL loss is
  the sum over both chains' final latents.

`chain_loss(z0) -> (loss [B], image)` is evaluated on each final latent of the sampler. Three ways to get the
same gradient:
- `checkpoint`: keep each step's input latents in the forward pass, recompute the step with grad backward
  (one forward and one VJP per network pass of the step); the last step is run with grad in the forward pass
  and its graph kept, which saves recomputing it when every item goes on to the backward pass;
- `reversible` (EDICT only): recover each step's input by EDICT inversion; one UNet evaluation per half-step
  serves both the inversion and the vector-Jacobian product (memory O(1) in steps);
- `autograd`: plain autograd through the unrolled sampler (memory O(steps)); the reference for tests.
Per gradient the single chain costs N forwards + (N − 1) recomputed forwards + N VJPs = 3N − 1 network passes,
EDICT's checkpoint 6N − 2 and reversible 6N."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from doodl_ray.sampling.chain import chain_step
from doodl_ray.sampling.edict import EpsFn, edict_step, swapped, unmix
from doodl_ray.sampling.schedule import Schedule

ChainLoss = Callable[[Tensor], tuple[Tensor, Tensor]]
Mode = Literal["checkpoint", "reversible", "autograd"]
Sampler = Literal["chain", "edict"]
State = tuple[Tensor, ...]  # the sampler's latents: (z,) for the single chain, (x, y) for EDICT


@dataclass
class ChainGradient:
    loss: Tensor  # [B], summed over the sampler's final latents, detached
    grad: Tensor  # dL/dz_T for the tied initial latents
    image: Tensor  # the first final latent's decoded image, detached
    finals: State  # the final latents


@dataclass
class ForwardPass:
    """The no-grad forward pass from tied initial latents, kept for the backward pass."""

    sampler: Sampler
    mode: Mode
    finals: State
    inputs: list[State]  # checkpoint mode: each step's input latents (the last step's only without `last`)
    last: tuple[State, State] | None = None  # checkpoint mode: the last step's (input leaves, output with graph)

    @property
    def x0(self) -> Tensor:
        """The rendered latents: the single chain's, or EDICT's x chain."""
        return self.finals[0]

    def select(self, rows: Tensor) -> "ForwardPass":
        """The same pass for a subset of the batch (items that go on while others stopped); the last step's
        graph is kept only when every row goes on (a subset recomputes that step for its own rows)."""
        if len(rows) == self.x0.shape[0] and torch.equal(rows.cpu(), torch.arange(len(rows))):
            return self
        pick = lambda state: tuple(t[rows] for t in state)  # noqa: E731
        inputs = [pick(s) for s in self.inputs] + ([pick(self.last[0])] if self.last is not None else [])
        return ForwardPass(self.sampler, self.mode, pick(self.finals), inputs)


def _stepper(sampler: Sampler, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool):
    """Step k of the sampler as a map of its latents."""
    if sampler == "chain":
        return lambda state, k: (chain_step(state[0], k, schedule, eps),)
    return lambda state, k: edict_step(*state, k, schedule, eps, p, leapfrog)


def _initial(z: Tensor, sampler: Sampler) -> State:
    return (z,) if sampler == "chain" else (z, z)


def chain_forward(
    z: Tensor, schedule: Schedule, eps: EpsFn, p: float, leapfrog: bool = True, mode: Mode = "checkpoint",
    sampler: Sampler = "edict",
) -> ForwardPass:
    """Run the sampler from z without grad; checkpoint mode stores each step's inputs and keeps the last
    step's graph."""
    if sampler == "chain" and mode == "reversible":
        raise ValueError("the single chain is not invertible: reversible gradients need the edict sampler")
    step = _stepper(sampler, schedule, eps, p, leapfrog)
    inputs: list[State] = []
    state, last = _initial(z, sampler), None
    n = len(schedule)
    with torch.no_grad():
        for k in range(n - 1 if mode == "checkpoint" else n):
            if mode == "checkpoint":
                inputs.append(state)
            state = step(state, k)
    if mode == "checkpoint":
        with torch.enable_grad():
            leaves = tuple(t.detach().requires_grad_(True) for t in state)
            out = step(leaves, n - 1)
        last, state = (leaves, out), tuple(t.detach() for t in out)
    return ForwardPass(sampler, mode, state, inputs, last)


def chain_backward(
    forward: ForwardPass, schedule: Schedule, eps: EpsFn, chain_loss: ChainLoss, p: float, leapfrog: bool = True
) -> ChainGradient:
    """dL/dz for L = the sum of chain_loss over the sampler's final latents, back through the pass `forward` ran."""
    inputs = list(forward.inputs)
    losses, grads, images = zip(*(_loss_and_adjoint(chain_loss, z0) for z0 in forward.finals))
    state, k = forward.finals, len(schedule) - 1
    if forward.last is not None:
        leaves, out = forward.last
        grads = torch.autograd.grad(out, leaves, grads)
        k -= 1
    step = _stepper(forward.sampler, schedule, eps, p, leapfrog)
    for k in range(k, -1, -1):
        if forward.mode == "checkpoint":
            grads = _checkpoint_backward_step(step, inputs.pop(), grads, k)
        else:
            state, grads = _reversible_backward_step(*state, *grads, k, schedule, eps, p, leapfrog)
    return ChainGradient(sum(losses), sum(grads), images[0], forward.finals)


def chain_gradient(
    z: Tensor, schedule: Schedule, eps: EpsFn, chain_loss: ChainLoss, p: float, leapfrog: bool = True,
    mode: Mode = "checkpoint", sampler: Sampler = "edict",
) -> ChainGradient:
    """dL/dz for tied initial latents z, L = the sum of chain_loss over the sampler's final latents."""
    if mode == "autograd":
        return _autograd(z, _stepper(sampler, schedule, eps, p, leapfrog), len(schedule), chain_loss, sampler)
    forward = chain_forward(z, schedule, eps, p, leapfrog, mode, sampler)
    return chain_backward(forward, schedule, eps, chain_loss, p, leapfrog)


def _loss_and_adjoint(chain_loss: ChainLoss, z0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        z0 = z0.detach().requires_grad_(True)
        loss, image = chain_loss(z0)
        (grad,) = torch.autograd.grad(loss.sum(), z0)
    return loss.detach(), grad, image.detach()


def _checkpoint_backward_step(step, inputs: State, grads: State, k: int) -> State:
    """Recompute step k from its stored inputs with grad, and pull the adjoints through it."""
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_(True) for t in inputs)
        return torch.autograd.grad(step(leaves, k), leaves, grads)


def _reversible_backward_step(x, y, gx, gy, k, schedule, eps, p, leapfrog) -> tuple[State, State]:
    """Invert EDICT step k from its outputs and pull the adjoints through it, by hand.

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
    return ((v, u), (gv, gu)) if swap else ((u, v), (gu, gv))


def _eps_and_vjp(eps: EpsFn, z: Tensor, t: int, g: Tensor) -> tuple[Tensor, Tensor]:
    """One UNet evaluation gives both the prediction (for inversion) and its VJP with g."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        e = eps(z, t)
        (vjp,) = torch.autograd.grad(e, z, g)
    return e.detach(), vjp


def _autograd(z: Tensor, step, steps: int, chain_loss: ChainLoss, sampler: Sampler) -> ChainGradient:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        state = _initial(z, sampler)
        for k in range(steps):
            state = step(state, k)
        losses, images = zip(*(chain_loss(z0) for z0 in state))
        loss = sum(losses)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return ChainGradient(loss.detach(), grad, images[0].detach(), tuple(t.detach() for t in state))
