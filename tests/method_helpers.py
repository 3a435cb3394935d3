"""Builders shared by the method and sampler tests: a DOODL engine on a tiny model, and a float64 sampler
problem (model, conditioning, noise, loss) for gradient checks."""

import torch
import torch.nn.functional as F

from doodl_ray.config import SamplerConfig
from doodl_ray.engine import Engine
from doodl_ray.guidance.classifier import load_torchscript_classifier
from doodl_ray.methods.base import images01
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.methods.specs.doodl import DoodlConfig
from doodl_ray.models import load_diffusion
from tests.tiny_models import TinyClassifier


def doodl_engine(model, classifier, optimizer="normalized", iterations=6, **doodl):
    """DOODL on `model`, guided by the TorchScript `classifier`, at six steps."""
    method = MethodConfig(
        name="doodl", guidance_scale=1.0, sampler=SamplerConfig(steps=6),
        doodl=DoodlConfig(iterations=iterations, optimizer=optimizer, lr=0.3, **doodl),
    )
    return Engine(model, load_torchscript_classifier(classifier), method)


def gradient_problem(path, text):
    """Two items on `path` in float64 (text-conditioned or not), and a classifier loss of the decoded image."""
    model = load_diffusion(path, dtype=torch.float64)
    batch = 2
    eps = model.condition(["a red bird", "a small dog"], None, 4.0) if text else model.condition(None, None, 1.0)
    z = torch.randn(batch, *model.latent_shape(None, None), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    classifier = TinyClassifier(3, 10).double().requires_grad_(False)
    targets = torch.tensor([3, 7])

    def chain_loss(z0):
        image = images01(model.decode(z0))
        return F.cross_entropy(classifier(image), targets, reduction="none"), image

    return model, eps, z, chain_loss
