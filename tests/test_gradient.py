"""The sampler gradient in every memory-flat mode (single chain checkpointed; EDICT checkpointed or reversible)
equals plain autograd through the same unrolled sampler (float64)."""

import pytest
import torch

from doodl_ray.sampling.gradient import chain_gradient
from doodl_ray.sampling.schedule import ddim_schedule
from tests.method_helpers import gradient_problem


SAMPLER_MODES = [("edict", "checkpoint"), ("edict", "reversible"), ("chain", "checkpoint")]


@pytest.mark.parametrize("sampler,mode", SAMPLER_MODES)
@pytest.mark.parametrize("text,steps,leapfrog", [(True, 4, True), (False, 5, True), (False, 4, False), (False, 1, True)])
def test_gradient_matches_autograd(tiny_sd, tiny_pixel, sampler, mode, text, steps, leapfrog):
    model, eps, z, chain_loss = gradient_problem(tiny_sd if text else tiny_pixel, text)
    schedule = ddim_schedule(model.scheduler_config, steps)
    reference = chain_gradient(z, schedule, eps, chain_loss, 0.93, leapfrog, "autograd", sampler)
    ours = chain_gradient(z, schedule, eps, chain_loss, 0.93, leapfrog, mode, sampler)
    assert reference.grad.abs().max() > 0
    assert float((ours.grad - reference.grad).norm() / reference.grad.norm()) <= 1e-8
    assert torch.allclose(ours.loss, reference.loss, rtol=1e-12, atol=0)
    assert torch.equal(ours.image, reference.image)


def test_no_parameter_gradients_are_computed(tiny_pixel):
    model, eps, z, chain_loss = gradient_problem(tiny_pixel, False)
    chain_gradient(z, ddim_schedule(model.scheduler_config, 3), eps, chain_loss, 0.93, True, "reversible")
    assert all(p.grad is None and not p.requires_grad for p in model.unet.parameters())


def test_single_chain_gradient_is_the_gradient_of_the_models_own_ddim_loop(tiny_pixel):
    """An independent reference: diffusers' DDIMScheduler.step unrolled under autograd from the same noise (its
    coefficients are float32, hence the looser bound than against our own unrolled chain)."""
    from diffusers import DDIMScheduler

    model, eps, z, chain_loss = gradient_problem(tiny_pixel, False)
    steps = 4
    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    leaf = z.clone().requires_grad_(True)
    latents = leaf
    for t in scheduler.timesteps:
        latents = scheduler.step(eps(latents, int(t)), t, latents).prev_sample
    loss, _ = chain_loss(latents)
    (expected,) = torch.autograd.grad(loss.sum(), leaf)
    ours = chain_gradient(z, ddim_schedule(model.scheduler_config, steps), eps, chain_loss, 0.93, True,
                          "checkpoint", "chain")
    assert float((ours.grad - expected).norm() / expected.norm()) <= 1e-6


def test_the_single_chain_has_no_reversible_mode(tiny_pixel):
    model, eps, z, chain_loss = gradient_problem(tiny_pixel, False)
    with pytest.raises(ValueError, match="not invertible"):
        chain_gradient(z, ddim_schedule(model.scheduler_config, 2), eps, chain_loss, 0.93, True, "reversible", "chain")
