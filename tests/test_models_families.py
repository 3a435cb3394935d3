"""SDXL, SD 3 and FLUX on tiny pipelines built from diffusers' own test configs, saved with save_pretrained and
loaded back: the sampler reproduces each model's own pipeline (conditioning, timesteps, shift, packing, decoding),
the coupled sampler inverts exactly, the memory-flat gradients equal plain autograd, one chain step is the model's
own scheduler step, the config-only inspection agrees with the loaded model, and `doodl-ray generate` runs end to
end with classifier and CLIP text guidance."""

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from PIL import Image

from doodl_ray.cli import main
from doodl_ray.errors import InvalidInput
from doodl_ray.methods.base import images01
from doodl_ray.methods.prior import DiffusionPrior
from doodl_ray.models import load_diffusion
from doodl_ray.models.flux import pack, unpack
from doodl_ray.models.inspect import image_shape, inspect_model
from doodl_ray.sampling.chain import chain_sample
from doodl_ray.sampling.edict import edict_invert, edict_sample
from doodl_ray.sampling.flow import dynamic_shift
from doodl_ray.sampling.gradient import chain_gradient
from tests.tiny_guides import ARCH_A, TAG, register_tiny_clips
from tests.tiny_models import TinyClassifier

FAMILIES = ["sdxl", "sd3", "flux"]
SIZE = 16  # pixels: 8x8 latents (4x4 transformer tokens)
PROMPTS = ["a red bird on a branch", "a small dog"]
CLASSES = {"sdxl": "SDXLDiffusion", "sd3": "SD3Diffusion", "flux": "FluxDiffusion"}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def loaded(tiny_family):
    """family, dtype -> the loaded model, once per module (adapters are frozen and hold no per-call state)."""
    models = {}

    def load(family: str, dtype: torch.dtype = torch.float32):
        if (family, dtype) not in models:
            models[family, dtype] = load_diffusion(tiny_family(family), dtype=dtype)
        return models[family, dtype]

    return load


def _noise(model, batch=2, dtype=torch.float64, seed=0):
    shape = model.latent_shape(SIZE, SIZE)
    return torch.randn(batch, *shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_reproduces_the_models_own_pipeline(tiny_family, loaded, family):
    """One single chain of our schedule and conditioning from the same noise gives the latents and the image
    the diffusers pipeline gives (SDXL with its scheduler swapped for DDIM, the step EDICT couples)."""
    folder, steps, w = tiny_family(family), 4, 3.0
    model = loaded(family)
    assert type(model).__name__ == CLASSES[family] and model.family == family
    z = _noise(model, dtype=torch.float32)
    with torch.no_grad():
        ours = chain_sample(z, model.schedule(steps, z.shape[1:]), model.condition(PROMPTS, None, w))
        image = images01(model.decode(ours))
    pipe = DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    if family == "sdxl":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    given = pack(z) if family == "flux" else z
    run = dict(prompt=PROMPTS, latents=given, num_inference_steps=steps, guidance_scale=w, height=SIZE, width=SIZE)
    theirs = pipe(**run, output_type="latent").images
    theirs = unpack(theirs, *z.shape[2:]) if family == "flux" else theirs
    assert _rel(ours, z) > 0.1
    assert _rel(ours, theirs) <= 1e-5
    torch.testing.assert_close(image, pipe(**run, output_type="pt").images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_coupled_sampler_roundtrip_50_steps_float64(loaded, family):
    model = loaded(family, torch.float64)
    eps, z = model.condition(PROMPTS[:1], None, 4.0), _noise(model, batch=1)
    schedule = model.schedule(50, z.shape[1:])
    with torch.no_grad():
        x, y = edict_sample(z, z, schedule, eps, 0.93)
        xr, yr = edict_invert(x, y, schedule, eps, 0.93)
    assert _rel(x, z) > 0.1
    assert max(_rel(xr, z), _rel(yr, z)) <= 1e-9


@pytest.mark.parametrize("sampler,mode", [("edict", "checkpoint"), ("edict", "reversible"), ("chain", "checkpoint")])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_matches_autograd_float64(loaded, family, sampler, mode):
    """Through the VAE decoder, a classifier and the diffusion prior (the model's own training loss)."""
    model = loaded(family, torch.float64)
    eps, z = model.condition(PROMPTS, None, 4.0), _noise(model, seed=3)
    schedule = model.schedule(3, z.shape[1:])
    torch.manual_seed(0)
    classifier = TinyClassifier(3, 10).double().requires_grad_(False)
    prior = DiffusionPrior(eps, model.training_pair, (0.4, 0.8), z.shape[1:], z.device, torch.float64)

    def chain_loss(z0):
        image = images01(model.decode(z0))
        return F.cross_entropy(classifier(image), torch.tensor([3, 7]), reduction="none") + prior(z0), image

    reference = chain_gradient(z, schedule, eps, chain_loss, 0.93, True, "autograd", sampler)
    ours = chain_gradient(z, schedule, eps, chain_loss, 0.93, True, mode, sampler)
    assert reference.grad.abs().max() > 0
    assert _rel(ours.grad, reference.grad) <= 1e-8
    assert torch.allclose(ours.loss, reference.loss, rtol=1e-12, atol=0)
    assert all(not p.requires_grad and p.grad is None for p in model.network.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_chain_step_is_the_models_own_scheduler_step(loaded, family):
    """z' = a_k z + b_k f equals DDIMScheduler.step (SDXL, from its Euler config) or
    FlowMatchEulerDiscreteScheduler.step set as the model's pipeline sets it (SD 3: static shift; FLUX: its σ grid
    and the dynamic shift of this latent size), at every step."""
    model = loaded(family, torch.float64)
    shape, steps = model.latent_shape(SIZE, SIZE), 10
    schedule = model.schedule(steps, shape)
    if family == "sdxl":
        reference = DDIMScheduler.from_config(model.scheduler_config)
        reference.set_timesteps(steps)
    else:
        config = model.scheduler_config
        reference = FlowMatchEulerDiscreteScheduler.from_config(config)
        mu = dynamic_shift(config, model.image_seq_len(shape)) if config.get("use_dynamic_shifting") else None
        reference.set_timesteps(steps, sigmas=model.flow_sigmas(steps), mu=mu)
    assert schedule.timesteps == [type(schedule.timesteps[0])(t) for t in reference.timesteps]
    z, f = torch.randn(2, 1, *shape, dtype=torch.float64)
    for k, t in enumerate(reference.timesteps):
        expected = reference.step(f.float(), t, z.float(), **({"eta": 0.0} if family == "sdxl" else {})).prev_sample
        assert _rel(float(schedule.a[k]) * z + float(schedule.b[k]) * f, expected.double()) <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_inspection_from_configs_agrees_with_the_loaded_model(tiny_family, loaded, family):
    info = inspect_model(tiny_family(family))
    model = loaded(family)
    assert info.family == family
    assert info.image_shape == model.image_shape(None, None)
    assert image_shape(info, SIZE, 2 * SIZE) == model.image_shape(SIZE, 2 * SIZE) == (3, SIZE, 2 * SIZE)
    assert model.latent_shape(SIZE, 2 * SIZE)[1:] == (SIZE // info.latent_scale, 2 * SIZE // info.latent_scale)
    bad = info.size_multiple + info.latent_scale if info.size_multiple > info.latent_scale else SIZE + 1
    with pytest.raises(InvalidInput, match="multiples of"):
        model.latent_shape(bad, SIZE)


@pytest.mark.parametrize("family,passes", [("sdxl", 2), ("sd3", 2), ("flux", 1)])
def test_default_guidance_scale_is_the_models_own(loaded, family, passes):
    """cfg_scale None means each pipeline's default: SDXL 5.0 and SD 3 7.0 with batched CFG; FLUX.1-dev's 3.5 as
    its guidance embedding in one pass, which changes the output."""
    model = loaded(family)
    defaults = {"sdxl": 5.0, "sd3": 7.0, "flux": 3.5}
    assert model.cfg(None) == defaults[family] and model.passes(None) == passes
    z = _noise(model, dtype=torch.float32)
    t = model.schedule(4, z.shape[1:]).timesteps[1]
    with torch.no_grad():
        default, explicit = model.condition(PROMPTS, None, None)(z, t), model.condition(PROMPTS, None, defaults[family])(z, t)
        other = model.condition(PROMPTS, None, 1.0)(z, t)
    assert torch.equal(default, explicit) and _rel(other, default) > 1e-3


@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory):
    """A CLIP text guidance spec over a tiny open_clip architecture registered from a config."""
    folder = tmp_path_factory.mktemp("clip")
    checkpoints = register_tiny_clips(folder)
    spec = folder / "clip-text.yaml"
    spec.write_text(f"type: clip-text\nmodels:\n  - {{model: {ARCH_A}, pretrained: {checkpoints[ARCH_A]}, tag: {TAG}}}\n"
                    "crops: {count: 2}\n")
    return spec


@pytest.mark.parametrize("guide", ["classifier", "clip-text"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_end_to_end(tiny_family, tiny_classifier, clip_spec, tmp_path, family, guide):
    out = tmp_path / "image.png"
    guidance = (["--guidance", "classifier", "--classifier", tiny_classifier, "--target", "2"] if guide == "classifier"
                else ["--guidance-spec", str(clip_spec), "--target", "a red circle"])
    code = main(["generate", "--model", tiny_family(family), "--prompt", "a photo of a bird", *guidance,
                 "--method", "doodl", "--iterations", "2", "--steps", "3", "--optimizer", "normalized",
                 "--prior-weight", "1", "--height", str(SIZE), "--width", str(2 * SIZE), "--seed", "5", "--out", str(out)])
    assert code == 0
    assert Image.open(out).size == (2 * SIZE, SIZE)
    history = json.loads(out.with_suffix(".history.json").read_text())
    assert len(history["history"]) == 3 and all(v == v for v in history["history"])  # finite, not NaN
    assert history["final_loss"] <= history["history"][0] + 1e-6  # the best iterate is kept
