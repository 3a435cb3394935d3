"""Guidance types, one registry: each type's settings model is a `GuidanceSpec` whose `type` names it and
whose methods say how it is checked before any actor starts, how it is built, and which files its results
depend on. The job spec's guidance fields, `validate`'s checks, the builder and provenance all come from
here, so a new guide is its settings module (registered with `register_guidance`) and the module that
implements it. Torch-free: a spec validates at CLI start; `build` imports the implementation on first use."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import BeforeValidator, SerializeAsAny

from doodl_ray.config import StrictModel
from doodl_ray.guidance.checks import Checks, ImageShape

if TYPE_CHECKING:
    import torch

    from doodl_ray.guidance.base import Guidance

GUIDANCE_TYPES: dict[str, type["GuidanceSpec"]] = {}


class GuidanceSpec(StrictModel, abc.ABC):
    """A guidance type's settings. Subclasses set `type` to a Literal of their name and register themselves."""

    type: str

    @abc.abstractmethod
    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        """Static checks that load no weights (names exist, files are readable, it takes `image_shape` (C, H, W)
        images); InvalidInput / ModelLoadError. What needs the network and cannot be reached goes to
        `checks.skipped`."""

    @abc.abstractmethod
    def build(self, device: "torch.device | str", storage_options: dict[str, Any],
              image_shape: Optional[ImageShape]) -> "Guidance":
        """The frozen guidance model on `device` (its settings already checked)."""

    def files(self) -> list[str]:
        """References whose contents the results depend on (models, weights, label files, images), for
        provenance: each is recorded with what pins its contents."""
        return []

    def needs_model_to_validate(self) -> bool:
        """Whether checking an item's target needs the model itself (a classifier's labels and class count)."""
        return False

    def static_labels(self) -> Optional[list[str]]:
        """Class names the settings fix without loading a model or reading remote storage (None: not known)."""
        return None

    def downloads_weights(self) -> bool:
        """Whether building it fetches a library's pretrained weights: what an offline check cannot load."""
        return False


def register_guidance(cls: type[GuidanceSpec]) -> type[GuidanceSpec]:
    """Class decorator: `cls` is the settings model of the guidance type its `type` default names."""
    GUIDANCE_TYPES[cls.model_fields["type"].default] = cls
    return cls


def _settings(value: Any) -> Any:
    """Plain data -> the registered settings model its `type` names (instances pass as they are)."""
    if isinstance(value, GuidanceSpec) or not isinstance(value, dict):
        return value
    kind = value.get("type")
    if kind not in GUIDANCE_TYPES:
        raise ValueError(f"unknown guidance type {kind!r}; one of: {', '.join(sorted(GUIDANCE_TYPES))}")
    return GUIDANCE_TYPES[kind].model_validate(value)


GuidanceConfig = Annotated[SerializeAsAny[GuidanceSpec], BeforeValidator(_settings)]
"""A field holding any registered guidance type's settings, chosen by `type` (dumps with all its fields)."""
