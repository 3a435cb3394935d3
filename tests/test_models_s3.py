"""Model folders and classifier files on S3 (a real HTTP endpoint: moto's server on loopback)."""

import numpy as np

from doodl_ray.config import SamplerConfig
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.engine import Engine, Item
from doodl_ray.guidance.spec import ClassifierGuidanceConfig
from tests.s3_server import s3_endpoint  # noqa: F401


def test_engine_loads_model_and_classifier_from_s3(s3_endpoint, tiny_pixel, tiny_classifier, tmp_path):  # noqa: F811
    bucket = s3_endpoint.bucket()
    fs = s3_endpoint.fs()
    fs.put(tiny_pixel, f"{bucket}/models/pixel", recursive=True)
    fs.put(tiny_classifier, f"{bucket}/models/classifier.pt")
    options = {"endpoint_url": s3_endpoint.url}
    method = MethodConfig(name="none", sampler=SamplerConfig(steps=3))
    guidance = ClassifierGuidanceConfig(model=f"s3://{bucket}/models/classifier.pt")
    remote = Engine(f"s3://{bucket}/models/pixel", guidance, method, storage_options=options)
    local = Engine(tiny_pixel, ClassifierGuidanceConfig(model=tiny_classifier), method)
    item = Item(id="a", seed=4, target=2)
    got, expected = remote.run([remote.validate(item)])[0], local.run([local.validate(item)])[0]
    assert np.array_equal(got.image, expected.image)
    assert got.final_loss == expected.final_loss
