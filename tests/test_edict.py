"""EDICT against its math: exact inversion, and each chain update equal to diffusers' own DDIM step."""

import pytest
import torch
from diffusers import DDIMScheduler

from doodl_ray.sampling.edict import edict_invert, edict_sample, edict_step, edict_unstep
from doodl_ray.models import load_diffusion
from doodl_ray.sampling.schedule import ddim_schedule


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("leapfrog", [True, False])
def test_roundtrip_latent_pipeline_50_steps_float64(tiny_sd, leapfrog):
    model = load_diffusion(tiny_sd, dtype=torch.float64)
    eps = model.condition(["a photo of a red bird", "an oil painting"], None, 5.0)
    schedule = ddim_schedule(model.scheduler_config, 50)
    z = torch.randn(2, *model.latent_shape(None, None), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, y = edict_sample(z, z, schedule, eps, 0.93, leapfrog)
    xr, yr = edict_invert(x, y, schedule, eps, 0.93, leapfrog)
    assert _rel(x, z) > 0.1  # sampling really moved the latents
    assert max(_rel(xr, z), _rel(yr, z)) <= 1e-9


@pytest.mark.parametrize("steps", [7, 8])  # odd and even counts: the inverse's parity must be the forward index
def test_roundtrip_pixel_model_both_parities(tiny_pixel, steps):
    model = load_diffusion(tiny_pixel, dtype=torch.float64)
    eps, schedule = model.condition(None, None, 1.0), ddim_schedule(model.scheduler_config, steps)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xs, ys = edict_sample(x, y, schedule, eps, 0.9)
    xr, yr = edict_invert(xs, ys, schedule, eps, 0.9)
    assert max(_rel(xr, x), _rel(yr, y)) <= 1e-9


def test_single_step_inverse_with_swapped_order(tiny_pixel):
    model = load_diffusion(tiny_pixel, dtype=torch.float64)
    eps, schedule = model.condition(None, None, 1.0), ddim_schedule(model.scheduler_config, 4)
    x, y = torch.randn(2, 1, 3, 16, 16, dtype=torch.float64)
    for k in range(4):
        xr, yr = edict_unstep(*edict_step(x, y, k, schedule, eps, 0.93), k, schedule, eps, 0.93)
        assert max(_rel(xr, x), _rel(yr, y)) <= 1e-12


def test_chain_update_is_diffusers_ddim_step(tiny_sd):
    """F_t(z, e) = a_t z + b_t e equals DDIMScheduler.step(e, t, z, eta=0) for every step, SD's steps_offset=1
    and set_alpha_to_one=False included (the final step goes to the scheduler's final alpha). diffusers does
    this scalar arithmetic in float32, hence the float32-level tolerance."""
    model = load_diffusion(tiny_sd, dtype=torch.float64)
    reference = DDIMScheduler.from_config(model.scheduler_config)
    reference.set_timesteps(10)
    schedule = ddim_schedule(model.scheduler_config, 10)
    assert schedule.timesteps == [int(t) for t in reference.timesteps]
    z, e = torch.randn(2, 1, 4, 8, 8, dtype=torch.float64)
    for k, t in enumerate(schedule.timesteps):
        expected = reference.step(e, t, z, eta=0.0).prev_sample
        assert _rel(float(schedule.a[k]) * z + float(schedule.b[k]) * e, expected) <= 1e-6
