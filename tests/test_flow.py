"""The coupled flow sampler against its math: levels from the model's own FlowMatchEulerDiscreteScheduler (static
and resolution-dependent shift), each chain update equal to the scheduler's Euler step, exact inversion, the
gradient in both memory-flat modes equal to plain autograd, and the flow-matching prior's closed form."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from doodl_ray.benchmarks.architectures import FLUX_SCHEDULER, SD3_SCHEDULER
from doodl_ray.methods.base import images01
from doodl_ray.methods.prior import DiffusionPrior
from doodl_ray.models import load_diffusion
from doodl_ray.models.base import FlowDiffusion
from doodl_ray.models.pixel import PixelFlowDiffusion
from doodl_ray.sampling.edict import edict_invert, edict_sample
from doodl_ray.sampling.flow import dynamic_shift, flow_schedule
from doodl_ray.sampling.gradient import chain_gradient
from tests.tiny_models import TinyClassifier


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_dynamic_shift_is_the_pipelines():
    for tokens in (16, 256, 1024, 4096, 6000):
        expected = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        assert dynamic_shift(FLUX_SCHEDULER, tokens) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("config,tokens,sigmas", [
    (SD3_SCHEDULER, None, None),  # StableDiffusion3Pipeline: the scheduler's own grid, static shift 3
    (FLUX_SCHEDULER, 4096, "flux"),  # FluxPipeline: linspace(1, 1/N, N), dynamic shift at 1024 px
])
def test_schedule_steps_are_the_schedulers_euler_steps(config, tokens, sigmas):
    """Levels, timesteps and every single-chain update z' = z + (σ' − σ) v equal FlowMatchEulerDiscreteScheduler
    set the way each pipeline sets it; diffusers does this arithmetic in float32."""
    steps = 12
    grid = np.linspace(1.0, 1 / steps, steps).tolist() if sigmas else None
    schedule = flow_schedule(config, steps, tokens, grid)
    reference = FlowMatchEulerDiscreteScheduler.from_config(config)
    reference.set_timesteps(steps, sigmas=grid, mu=calculate_shift(tokens, 256, 4096, 0.5, 1.15) if tokens else None)
    assert schedule.prediction == "velocity" and len(schedule) == steps
    assert schedule.timesteps == [float(t) for t in reference.timesteps]
    assert float(schedule.sigma[0]) == 1.0 and float(schedule.sigma_next[-1]) == 0.0
    torch.testing.assert_close(schedule.alpha + schedule.sigma, torch.ones(steps, dtype=torch.float64))
    assert torch.equal(schedule.a, torch.ones(steps, dtype=torch.float64))
    z, v = torch.randn(2, 1, 4, 8, 8, dtype=torch.float64)
    for k, t in enumerate(reference.timesteps):
        expected = reference.step(v.float(), t, z.float()).prev_sample.double()
        assert _rel(float(schedule.a[k]) * z + float(schedule.b[k]) * v, expected) <= 1e-6


def test_schedule_rejects_what_it_cannot_integrate():
    with pytest.raises(ValueError, match="image_seq_len"):
        flow_schedule(FLUX_SCHEDULER, 4)
    with pytest.raises(ValueError, match="invert_sigmas"):
        flow_schedule({**SD3_SCHEDULER, "invert_sigmas": True}, 4)


def test_bare_unet_with_a_flow_scheduler_is_a_velocity_model(tiny_pixel_flow):
    model = load_diffusion(tiny_pixel_flow, dtype=torch.float64)
    assert isinstance(model, PixelFlowDiffusion) and model.family == "pixel-flow"
    schedule = model.schedule(5, model.latent_shape(None, None))
    assert schedule.prediction == "velocity" and schedule.timesteps[0] == 1000.0


@pytest.mark.parametrize("steps,leapfrog", [(50, True), (7, True), (8, True), (8, False)])
def test_roundtrip_is_exact_float64(tiny_pixel_flow, steps, leapfrog):
    """Odd and even step counts: the inverse's parity must be the forward index."""
    model = load_diffusion(tiny_pixel_flow, dtype=torch.float64)
    eps, schedule = model.condition(None, None, None), model.schedule(steps, (3, 16, 16))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xs, ys = edict_sample(x, y, schedule, eps, 0.93, leapfrog)
    xr, yr = edict_invert(xs, ys, schedule, eps, 0.93, leapfrog)
    assert _rel(xs, x) > 0.1  # sampling really moved the latents
    assert max(_rel(xr, x), _rel(yr, y)) <= 1e-9


@pytest.mark.parametrize("sampler,mode", [("edict", "checkpoint"), ("edict", "reversible"), ("chain", "checkpoint")])
def test_gradient_with_the_flow_prior_equals_plain_autograd(tiny_pixel_flow, sampler, mode):
    model = load_diffusion(tiny_pixel_flow, dtype=torch.float64)
    eps, schedule = model.condition(None, None, None), model.schedule(4, (3, 16, 16))
    z = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    classifier = TinyClassifier(3, 10).double().requires_grad_(False)
    prior = DiffusionPrior(eps, model.training_pair, (0.3, 0.7), (3, 16, 16), z.device, torch.float64)

    def chain_loss(z0):
        image = images01(model.decode(z0))
        return F.cross_entropy(classifier(image), torch.tensor([3, 7]), reduction="none") + 2.0 * prior(z0), image

    reference = chain_gradient(z, schedule, eps, chain_loss, 0.93, True, "autograd", sampler)
    ours = chain_gradient(z, schedule, eps, chain_loss, 0.93, True, mode, sampler)
    assert reference.grad.abs().max() > 0
    assert _rel(ours.grad, reference.grad) <= 1e-8


class PointMassFlow(FlowDiffusion):
    """The exact velocity field when the data is the single point `center`: z_σ = (1 − σ) c + σ n, so
    v(z, σ) = n − c = (z − c)/σ, with σ = t/T."""

    def __init__(self, center: torch.Tensor):
        super().__init__(torch.nn.Identity(), dict(FLOW_CONFIG))
        self.center = center

    def condition(self, prompts, class_labels, cfg_scale):
        return lambda z, t: (z - self.center) / (t / self.train_steps)


FLOW_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def test_flow_prior_is_the_closed_form_of_a_point_mass():
    center = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    model = PointMassFlow(center)
    levels = (0.3, 0.5, 0.7)
    prior = DiffusionPrior(model.condition(None, None, None), model.training_pair, levels, (2, 4, 4),
                           torch.device("cpu"), torch.float64)
    z = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    # v(z_σ) − (n − z0) = (z0 − c)/σ: the distance to the data, weighted by 1/σ², whatever the probe noise.
    expected = sum(1 / s**2 for s in levels) / 3 * (z - center).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(prior(z), expected)
    assert prior(center).abs().max() < 1e-20
    noisy, t, target = model.training_pair(z, torch.zeros_like(z), 0.25)
    assert t == 250.0 and torch.equal(target, -z)
    torch.testing.assert_close(noisy, 0.75 * z)
