"""The DOODL loop: it lowers the guidance loss, returns the best iterate, keeps the noise norm, is
deterministic per item, and stops with a clear error on a non-finite loss."""

import pytest

from doodl_ray.config import SamplerConfig
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.engine import Engine, Item
from doodl_ray.errors import NonFiniteLoss
from doodl_ray.guidance.base import Guidance
from tests.method_helpers import doodl_engine


@pytest.mark.parametrize("optimizer", ["reference", "normalized", "adam"])
def test_doodl_lowers_the_loss_and_returns_the_best_iterate(tiny_pixel, tiny_classifier, optimizer):
    engine = doodl_engine(tiny_pixel, tiny_classifier, optimizer, **({"clip": 0.05} if optimizer == "reference" else {}))
    items = [engine.validate(Item(id=str(i), seed=10 + i, target=i)) for i in range(2)]
    for result in engine.run(items):
        assert len(result.history) == 7
        assert result.history[0] == pytest.approx(result.initial_loss)
        assert result.final_loss == pytest.approx(min(result.history), rel=1e-5)
        assert result.history[result.best_iteration] == pytest.approx(result.final_loss, rel=1e-5)
        assert result.final_loss < result.initial_loss


def test_noise_stays_on_its_initial_norm(tiny_pixel, tiny_classifier):
    from doodl_ray.methods import METHODS

    engine = doodl_engine(tiny_pixel, tiny_classifier, "adam", iterations=3)
    problem = engine.problem([engine.validate(Item(id="a", seed=1, target=2))])
    result = METHODS["doodl"].run(problem, engine.method)
    assert result.best_iteration[0] > 0  # an optimized iterate, not the initial noise
    assert float(result.noise.norm()) == pytest.approx(float(problem.noise.norm()), rel=1e-5)


def test_same_item_same_result_in_any_batch(tiny_pixel, tiny_classifier):
    engine = doodl_engine(tiny_pixel, tiny_classifier, "reference", iterations=2)
    a, b = (engine.validate(Item(id=i, seed=s, target=t)) for i, s, t in (("a", 5, 1), ("b", 6, 4)))
    together = engine.run([a, b])
    alone = engine.run([b])
    assert (together[1].image == alone[0].image).all()
    assert together[1].history == pytest.approx(alone[0].history, rel=1e-5)
    assert (engine.run([a])[0].image == together[0].image).all()


class NaNGuidance(Guidance):
    """A guide whose loss is NaN: the engine must refuse to continue with a clear error."""

    def validate_target(self, target, prompt=None):
        return target

    def loss(self, images, targets, generators):
        return images.mean(dim=(1, 2, 3)) * float("nan")


def test_nan_loss_is_a_clear_error(tiny_pixel):
    method = MethodConfig(name="doodl", sampler=SamplerConfig(steps=3), doodl=DoodlConfig(iterations=2))
    engine = Engine(tiny_pixel, NaNGuidance(), method)
    with pytest.raises(NonFiniteLoss, match="non-finite guidance loss"):
        engine.run([engine.validate(Item(id="a", seed=0, target=0))])
