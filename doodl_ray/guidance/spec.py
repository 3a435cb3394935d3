"""Guidance specs (shared by the CLI and the job spec): parsing, static checks and building, for every
guidance type in the registry (guidance.registry; the built-in types' settings are in guidance.specs).

Every spec is validated by `parse_guidance_config` (bad fields -> InvalidInput) and statically checked by
`check_guidance` (unknown model names, missing weight files, unreadable reference images -> InvalidInput /
ModelLoadError) without loading any weights, so a job fails on the driver before any actor starts; offline,
it runs what needs no network and lists what it skipped. `build_guidance` loads the frozen models (float32,
each with its own eval transform: see guidance.preprocess). Both take the diffusion model's decoded image
shape, (C, H, W), for classifiers whose files do not say what input they take.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import TypeAdapter, ValidationError

from doodl_ray.config import validation_problems
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.checks import Checks, ImageShape
from doodl_ray.guidance.registry import GuidanceConfig, GuidanceSpec
from doodl_ray.guidance.settings import ClipModelConfig, CropConfig
from doodl_ray.guidance.specs.aesthetic import AestheticGuidanceConfig
from doodl_ray.guidance.specs.classifier import ClassifierGuidanceConfig
from doodl_ray.guidance.specs.clip import ClipImageGuidanceConfig, ClipTextGuidanceConfig
from doodl_ray.guidance.specs.combination import CombinationGuidanceConfig, CombinationTerm

if TYPE_CHECKING:  # specs are plain data: validating one (every CLI start) needs no torch
    import torch

    from doodl_ray.guidance.base import Guidance

__all__ = ["AestheticGuidanceConfig", "ClassifierGuidanceConfig", "ClipImageGuidanceConfig", "ClipModelConfig",
           "ClipTextGuidanceConfig", "CombinationGuidanceConfig", "CombinationTerm", "CropConfig", "GuidanceConfig",
           "build_guidance", "check_guidance", "load_guidance_spec", "parse_guidance_config"]

_ADAPTER: TypeAdapter = TypeAdapter(GuidanceConfig)


def parse_guidance_config(data: Any) -> GuidanceSpec:
    """A GuidanceConfig from plain data (e.g. a YAML mapping); any problem -> InvalidInput in one line."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidInput(f"bad guidance spec: {validation_problems(exc, 'guidance')}") from None


def load_guidance_spec(path: str | Path) -> GuidanceSpec:
    """A GuidanceConfig from a YAML file (`doodl-ray generate --guidance-spec`): either one guidance mapping,
    or a job spec whose `guidance:` section is used, so one file can serve the CLI and a job."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read guidance spec {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(data, dict) and "type" not in data and "guidance" in data:
        data = data["guidance"]
    return parse_guidance_config(data)


def check_guidance(
    config: GuidanceSpec,
    storage_options: dict | None = None,
    image_shape: ImageShape | None = None,
    offline: bool = False,
) -> list[str]:
    """Static checks that need no weights: model names exist, weight files, label files and reference images are
    readable, the guide can take `image_shape` (C, H, W) images. With `image_shape`, classifier files are also
    loaded on the CPU and probed with one such image, since only the program can say whether it fits.
    Raises InvalidInput / ModelLoadError; meant for the driver, before any actor starts. Offline, checks that
    need remote storage or a model hub are skipped; the return value describes each, one line (else [])."""
    checks = Checks(storage_options or {}, offline)
    if image_shape is not None and (len(image_shape) != 3 or not all(int(d) > 0 for d in image_shape)):
        raise InvalidInput(f"image shape must be (channels, height, width), not {image_shape}")
    config.check(checks, tuple(image_shape) if image_shape else None)
    return checks.skipped


def build_guidance(
    config: GuidanceSpec,
    device: torch.device | str = "cpu",
    storage_options: dict | None = None,
    image_shape: ImageShape | None = None,
) -> Guidance:
    """Load the frozen guidance model a spec names, on `device` (checks the spec first). `image_shape` (C, H, W)
    is what the diffusion model decodes to: a classifier file that does not describe its input takes that."""
    opts = storage_options or {}
    check_guidance(config, opts)
    return config.build(device, opts, tuple(image_shape) if image_shape else None)
