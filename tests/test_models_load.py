"""Loading as a user would: every family from a local or s3:// folder, fp16-variant folders, and one-line errors
for a pipeline of an unsupported family or a reference that is no model."""

import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from doodl_ray.benchmarks.architectures import build_pipeline
from doodl_ray.errors import ModelLoadError
from doodl_ray.models import load_diffusion
from doodl_ray.models.inspect import check_model
from doodl_ray.models.load import weight_variant
from tests.s3_server import s3_endpoint  # noqa: F401

SUPPORTED = "flux (FluxPipeline); pixel (DDIMPipeline, DDPMPipeline); sd (StableDiffusionPipeline); " \
            "sd3 (StableDiffusion3Pipeline); sdxl (StableDiffusionXLPipeline)"


def _weights(model) -> dict[str, torch.Tensor]:
    modules = {"network": model.network, "vae": model.vae}
    modules.update({f"text{i}": e for i, e in enumerate(model.text_encoders)})
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_each_family_loads_from_s3(s3_endpoint, tiny_family, family):  # noqa: F811
    bucket, fs = s3_endpoint.bucket(), s3_endpoint.fs()
    fs.put(tiny_family(family), f"{bucket}/models/{family}", recursive=True)
    remote = load_diffusion(f"s3://{bucket}/models/{family}", storage_options={"endpoint_url": s3_endpoint.url})
    local = load_diffusion(tiny_family(family))
    assert type(remote) is type(local)
    ours, theirs = _weights(remote), _weights(local)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_fp16_variant_folders_load_by_the_dtype_policy(tmp_path):
    """A folder holding only `*.fp16.safetensors` loads in any dtype; one holding both loads the fp16 files when
    the model runs in 16 bits and the full-precision ones otherwise (here two different weight sets, to tell)."""
    full, half = build_pipeline("flux", tiny=True, seed=0), build_pipeline("flux", tiny=True, seed=1)
    half.to(torch.float16)
    half.save_pretrained(tmp_path / "only-fp16", variant="fp16")
    full.save_pretrained(tmp_path / "both")
    half.save_pretrained(tmp_path / "both", variant="fp16")
    expected_half = {k: v.to(torch.bfloat16) for k, v in half.transformer.state_dict().items()}
    for folder, dtype, expected in [("only-fp16", torch.float32, half), ("both", torch.float32, full)]:
        got = load_diffusion(str(tmp_path / folder), dtype=dtype).network.state_dict()
        assert all(torch.equal(got[k], v.float()) for k, v in expected.transformer.state_dict().items())
    got = load_diffusion(str(tmp_path / "both"), dtype=torch.bfloat16).network.state_dict()
    assert got.keys() == expected_half.keys() and all(torch.equal(got[k], v) for k, v in expected_half.items())
    assert weight_variant(["unet/diffusion_pytorch_model.safetensors"], torch.bfloat16) is None
    assert weight_variant(["text_encoder_2/model.fp16-00001-of-00002.safetensors"], torch.float32) == "fp16"
    assert weight_variant(None, torch.bfloat16) is None


@pytest.fixture(scope="module")
def img2img_folder(tmp_path_factory):
    """A pipeline of a family we do not sample from: SDXL's image-to-image (refiner) layout, saved the library's way."""
    folder = tmp_path_factory.mktemp("sdxl-img2img")
    StableDiffusionXLImg2ImgPipeline(**build_pipeline("sdxl", tiny=True).components).save_pretrained(folder)
    return str(folder)


def test_an_unsupported_family_names_the_supported_ones(img2img_folder):
    message = f"'StableDiffusionXLImg2ImgPipeline' is not a supported family (supported: {SUPPORTED})"
    with pytest.raises(ModelLoadError) as loading:
        load_diffusion(img2img_folder)
    with pytest.raises(ModelLoadError) as checking:
        check_model(img2img_folder)
    for error in (loading, checking):
        assert message in str(error.value) and "\n" not in str(error.value)


def test_generate_reports_an_unsupported_family_in_one_line(img2img_folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "generate", "--model", img2img_folder, "--prompt",
                           "a bird", "--method", "none", "--out", str(tmp_path / "x.png")], capture_output=True,
                          text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and f"is not a supported family (supported: {SUPPORTED})" in errors[0], proc.stderr


@pytest.mark.parametrize("ref", ["{tmp}/no-such-model", "no-such-org/no-such-model"])
def test_a_reference_that_is_no_model_fails_in_one_line(tmp_path, ref):
    ref = ref.format(tmp=tmp_path)
    with pytest.raises(ModelLoadError, match="is not a loadable diffusers model hub id or path") as error:
        load_diffusion(ref)
    assert "\n" not in str(error.value)


def test_a_missing_model_is_an_error_before_loading(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        check_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("name,model,steps,cfg", [("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 50, 5.0),
                                                 ("flux-dev", "black-forest-labs/FLUX.1-dev", 28, 3.5)])
def test_example_job_specs_pass_the_schema(name, model, steps, cfg):
    """jobs/sdxl.yaml and jobs/flux-dev.yaml: valid specs with each pipeline's steps and guidance at 1024 px."""
    from pathlib import Path

    from doodl_ray.jobs.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "jobs" / f"{name}.yaml")
    sampler = spec.method.sampler
    assert (spec.model, sampler.steps, sampler.cfg_scale, sampler.height, sampler.width) == (model, steps, cfg, 1024, 1024)
    assert spec.dtype == "bfloat16" and spec.method.name == "doodl"
