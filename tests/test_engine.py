"""The Engine over real tiny diffusers models: every method, both model kinds, and validation before work."""

import numpy as np
import pytest

from doodl_ray.config import SamplerConfig
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.engine import Engine, Item
from doodl_ray.methods.base import candidate_seed
from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.guidance.classifier import load_torchscript_classifier
from tests.tiny_models import save_tiny_pixel


def _method(name, **kw):
    return MethodConfig(name=name, sampler=SamplerConfig(steps=4, cfg_scale=3.0),
                        doodl=DoodlConfig(iterations=2, optimizer="normalized"), candidates=3, **kw)


@pytest.mark.parametrize("name", ["none", "one-step", "best-of-n", "doodl"])
def test_every_method_on_a_latent_text_pipeline(tiny_sd, tiny_classifier, name):
    engine = Engine(tiny_sd, load_torchscript_classifier(tiny_classifier), _method(name))
    items = [engine.validate(Item(id=f"i{i}", seed=i, prompt=p, target=i)) for i, p in enumerate(["a bird", "a dog"])]
    results = engine.run(items)
    assert [r.id for r in results] == ["i0", "i1"]
    for r in results:
        assert r.image.shape == (16, 16, 3) and r.image.dtype == np.uint8
        assert np.isfinite(r.initial_loss) and np.isfinite(r.final_loss)
        assert set(r.terms) == {"classifier"}
        if name in ("best-of-n", "doodl"):
            assert r.final_loss <= r.initial_loss + 1e-6


def test_one_step_guidance_changes_the_image(tiny_pixel, tiny_classifier):
    guide = load_torchscript_classifier(tiny_classifier)
    item = Item(id="a", seed=3, target=5)
    plain = Engine(tiny_pixel, guide, _method("none")).run([item])[0]
    guided = Engine(tiny_pixel, guide, _method("one-step", guidance_scale=5.0)).run([item])[0]
    assert guided.initial_loss == pytest.approx(plain.final_loss)
    assert np.abs(guided.image.astype(int) - plain.image.astype(int)).max() > 0


def test_best_of_n_candidate_zero_is_the_item_itself(tiny_pixel, tiny_classifier):
    guide = load_torchscript_classifier(tiny_classifier)
    one = Engine(tiny_pixel, guide, _method("best-of-n").model_copy(update={"candidates": 1})).run([Item("a", 9, target=1)])[0]
    plain = Engine(tiny_pixel, guide, _method("none")).run([Item("a", 9, target=1)])[0]
    assert (one.image == plain.image).all()
    assert candidate_seed(9, 1) != candidate_seed(9, 2) != 9


def test_validation_before_any_work(tiny_sd, tiny_pixel, tiny_classifier, tmp_path):
    guide = load_torchscript_classifier(tiny_classifier)
    text = Engine(tiny_sd, guide, _method("doodl"))
    with pytest.raises(InvalidInput, match="non-empty prompt"):
        text.validate(Item(id="a", seed=0, prompt="  ", target=1))
    with pytest.raises(InvalidInput, match="outside the classifier's 10 classes"):
        text.validate(Item(id="a", seed=0, prompt="a cat", target=10))
    with pytest.raises(InvalidInput, match="not a class index or name"):
        text.validate(Item(id="a", seed=0, prompt="a cat", target=None))
    with pytest.raises(InvalidInput, match="needs a guidance model"):
        Engine(tiny_pixel, None, _method("doodl"))
    conditional = save_tiny_pixel(tmp_path / "cond", num_class_embeds=4)
    engine = Engine(str(conditional), guide, _method("none"))
    with pytest.raises(InvalidInput, match="class label"):
        engine.validate(Item(id="a", seed=0, target=1))
    result = engine.run([engine.validate(Item(id="a", seed=0, target=1, class_label=3))])[0]
    assert result.image.shape == (16, 16, 3)


def test_model_references_that_are_not_models(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither model_index.json nor a UNet2DModel"):
        Engine(str(tmp_path / "empty"), None, _method("none"))
    with pytest.raises(ModelLoadError, match="not a loadable diffusers model"):
        Engine(str(tmp_path / "missing"), None, _method("none"))


def test_bare_unet_folder_loads_with_default_scheduler(tmp_path):
    from diffusers import UNet2DModel

    pipeline = save_tiny_pixel(tmp_path / "pipe", channels=1)
    UNet2DModel.from_pretrained(pipeline / "unet").save_pretrained(tmp_path / "bare")
    result = Engine(str(tmp_path / "bare"), None, _method("none")).run([Item("a", 0)])[0]
    assert result.image.shape == (16, 16, 1)
