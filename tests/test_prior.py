"""The diffusion prior: its value against a closed form, its gradient through the whole sampler against
plain autograd (float64), its role in choosing the best iterate, and its config checks."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from doodl_ray.config import PriorConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.engine import Item
from doodl_ray.methods import METHODS
from doodl_ray.methods.prior import DiffusionPrior
from doodl_ray.models.base import Diffusion
from doodl_ray.sampling.gradient import chain_gradient
from doodl_ray.sampling.schedule import ddim_schedule
from tests.method_helpers import doodl_engine, gradient_problem

ALPHAS = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)


def ddpm_training_pair(z0, noise, level):
    """The base adapter's own training pair, on the ALPHAS schedule."""
    return Diffusion.training_pair(SimpleNamespace(alphas_cumprod=ALPHAS), z0, noise, level)


def point_mass_eps(center: torch.Tensor):
    """The exact noise prediction when the data is the single point `center`: eps = (z_t - sqrt(a) c) / sqrt(1 - a)."""

    def eps(z, t):
        a = float(ALPHAS[t])
        return (z - a**0.5 * center) / (1 - a) ** 0.5

    return eps


def test_prior_is_the_closed_form_denoising_error_of_a_point_mass():
    center = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    prior = DiffusionPrior(point_mass_eps(center), ddpm_training_pair, (0.3, 0.5, 0.7), (2, 4, 4),
                           torch.device("cpu"), torch.float64)
    z = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    # eps - n = sqrt(a / (1 - a)) (z - c): the error is the distance to the data, weighted by the noise levels.
    expected = sum(float(ALPHAS[t] / (1 - ALPHAS[t])) for t in (300, 500, 700)) / 3 * (z - center).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(prior(z), expected)
    assert prior(center).abs().max() < 1e-20


@pytest.mark.parametrize("text", [True, False])
def test_gradient_with_the_prior_term_equals_plain_autograd(tiny_sd, tiny_pixel, text):
    model, eps, z, chain_loss = gradient_problem(tiny_sd if text else tiny_pixel, text)
    schedule = ddim_schedule(model.scheduler_config, 4)
    prior = DiffusionPrior(eps, model.training_pair, (0.3, 0.6), model.latent_shape(None, None), z.device, torch.float64)

    def loss(z0):
        value, image = chain_loss(z0)
        return value + 5.0 * prior(z0), image

    reference = chain_gradient(z, schedule, eps, loss, 0.93, True, "autograd")
    ours = chain_gradient(z, schedule, eps, loss, 0.93, True, "reversible")
    assert float((ours.grad - reference.grad).norm() / reference.grad.norm()) <= 1e-8
    without = chain_gradient(z, schedule, eps, chain_loss, 0.93, True, "autograd")
    assert float((without.grad - reference.grad).norm() / reference.grad.norm()) > 1e-3  # the prior term counts


def test_prior_selection_picks_the_iterate_with_the_lowest_combined_score(tiny_pixel, tiny_classifier):
    engine = doodl_engine(tiny_pixel, tiny_classifier, iterations=5)
    config = engine.method.model_copy(update={"prior": PriorConfig(selection=50.0, levels=(0.5,))})
    engine.method, engine.needs_prior = config, True
    items = [engine.validate(Item(id=str(i), seed=20 + i, target=i)) for i in range(3)]
    problem = engine.problem(items)
    seen = []

    def recording(rows):
        batch = problem.make_batch(rows)
        base = batch.prior

        def prior(z0):
            value = base(z0)
            seen.append(value.detach().double().cpu())
            return value

        return dataclasses.replace(batch, prior=prior)

    result = METHODS["doodl"].run(dataclasses.replace(problem, make_batch=recording), config)
    history = torch.tensor(result.history).T  # [iterations + 1, items]
    combined = history + 50.0 * torch.stack(seen)
    assert result.best_iteration == combined.argmin(0).tolist()
    assert result.best_iteration != history.argmin(0).tolist()  # the prior changed the choice


def test_prior_in_the_engine_moves_results_towards_the_data(tiny_pixel, tiny_classifier):
    plain = doodl_engine(tiny_pixel, tiny_classifier, iterations=4)
    with_prior_term = doodl_engine(tiny_pixel, tiny_classifier, iterations=4, prior_weight=100.0)
    items = [plain.validate(Item(id=str(i), seed=30 + i, target=i)) for i in range(2)]
    prior = DiffusionPrior(plain.diffusion.condition(None, None, 1.0), plain.diffusion.training_pair, (0.3, 0.5, 0.7),
                           plain.latent_shape, plain.device, torch.float32)
    with torch.no_grad():
        assert (prior(_model_range(with_prior_term.run(items))) < prior(_model_range(plain.run(items)))).all()


def _model_range(results) -> torch.Tensor:
    return torch.from_numpy(np.stack([r.image for r in results])).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_prior_settings_are_checked():
    with pytest.raises(ValidationError, match="prior level"):
        PriorConfig(levels=(0.5, 1.0))
    with pytest.raises(ValidationError):
        DoodlConfig(prior_weight=-1)
