"""Model families, one registry: each declares the diffusers pipelines it loads (`model_index.json`'s
`_class_name`), where its denoiser's config lives, the geometry of the images it makes (from config files
alone), and its adapter, imported only to load a model. `inspect` (what `validate` and preflight read, no
weights) and `load` derive everything from here, so a new family is its adapter module and one entry here.
Torch-free: checking a spec needs no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from doodl_ray.plugins import load_attribute

Config = dict[str, Any]
Geometry = tuple[tuple[int, int, int], int, int]  # (C, H, W) at the native size, latent scale, size multiple


@dataclass(frozen=True)
class Family:
    """A model family and what is known of it before any weights are read."""

    name: str
    pipelines: tuple[str, ...]  # model_index.json `_class_name`s it loads
    network: str  # the subfolder of the denoiser's config.json
    geometry: Callable[[Config, Config], Geometry]  # (denoiser config, VAE config) -> its images' geometry
    adapter: str  # "module:Class": the Diffusion adapter, whose from_pipeline(pipe) wraps a loaded pipeline
    vae: bool = True  # a latent family: its images come out of vae/

    def adapter_class(self) -> Any:
        return load_attribute(self.adapter)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def family_of(pipeline: str) -> Family | None:
    """The family that loads a pipeline class, or None."""
    return next((f for f in FAMILIES.values() if pipeline in f.pipelines), None)


def supported_families() -> str:
    """'family (PipelineClass, ...)' for every supported family, for error messages."""
    return "; ".join(f"{name} ({', '.join(sorted(f.pipelines))})" for name, f in sorted(FAMILIES.items()))


def pixel_geometry(network: Config, vae: Config | None = None) -> Geometry:
    """A pixel model makes its network's samples: (in_channels, sample_size), at any size."""
    size = network.get("sample_size", 32)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(network.get("in_channels", 3)), int(h), int(w)), 1, 1


def latent_geometry(native_latents: Callable[[Config], int], packing: Callable[[Config], int]) -> Callable:
    """A latent family's geometry by its pipeline's rules: the VAE downsamples by s = 2^(levels - 1); the
    native side is `native_latents(network)` latents times s; sides are multiples of s times `packing(network)`
    (the transformer's patch size, or FLUX's 2×2 packing)."""
    def geometry(network: Config, vae: Config) -> Geometry:
        scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        side = native_latents(network) * scale
        return (int(vae.get("out_channels", 3)), side, side), scale, scale * packing(network)

    return geometry


FLUX_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size: its transformer config has no sample_size

register_family(Family("sd", ("StableDiffusionPipeline",), "unet",
                       latent_geometry(lambda n: int(n.get("sample_size", 64)), lambda n: 1),
                       "doodl_ray.models.sd:LatentTextDiffusion"))
register_family(Family("sdxl", ("StableDiffusionXLPipeline",), "unet",
                       latent_geometry(lambda n: int(n.get("sample_size", 64)), lambda n: 1),
                       "doodl_ray.models.sdxl:SDXLDiffusion"))
register_family(Family("sd3", ("StableDiffusion3Pipeline",), "transformer",
                       latent_geometry(lambda n: int(n.get("sample_size", 128)), lambda n: int(n.get("patch_size", 2))),
                       "doodl_ray.models.sd3:SD3Diffusion"))
register_family(Family("flux", ("FluxPipeline",), "transformer",
                       latent_geometry(lambda n: FLUX_SAMPLE_SIZE, lambda n: 2), "doodl_ray.models.flux:FluxDiffusion"))
register_family(Family("pixel", ("DDIMPipeline", "DDPMPipeline"), "unet", pixel_geometry,
                       "doodl_ray.models.pixel:PixelDiffusion", vae=False))
