"""Image classifiers from timm, torchvision and transformers (by name, hub id, folder or checkpoint) and classifier
files (TorchScript, torch.export), all as float32 `ClassifierGuidance` with the model's own eval transform.

Each library's transform is the one it evaluates with: timm's `resolve_data_config` (crop_pct, crop_mode,
interpolation), torchvision's `weights.transforms()` (resize_size, crop_size, interpolation), the transformers
image processor itself (see guidance.preprocess). Labels are the model's own metadata only: timm's
`pretrained_cfg['label_names']`, torchvision's weight categories, transformers' `id2label` (not its LABEL_i
placeholders); a user's checkpoint has none of its own, so it takes the spec's `labels` or targets by index.

A library's pretrained weights keep their trained head: `num_classes` only applies to a checkpoint in
`weights`, because asking timm/torchvision for another head size with their weights silently replaces
the head with a random one, which is no guide at all."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import is_remote, local_copy
from doodl_ray.guidance.base import load_weights
from doodl_ray.guidance.checks import Checks, check_rgb, ref_exists
from doodl_ray.guidance.classifier import ClassifierGuidance, load_torchscript_classifier, probe_classes
from doodl_ray.guidance.labels import read_labels
from doodl_ray.guidance.preprocess import ImageTransform, Preprocess, ProcessorTransform, from_timm, from_torchvision

if TYPE_CHECKING:  # the settings import this module to check and build: only their type is needed here
    from doodl_ray.guidance.specs.classifier import ClassifierGuidanceConfig

HF_HUB = "hf-hub:"


@dataclass
class _Parts:
    """What a library tells us about a loaded classifier, before the spec's overrides."""

    model: nn.Module
    preprocess: ImageTransform
    labels: list[str] | None
    num_classes: int | None = None  # known without a probe


class _LogitsOf(nn.Module):
    """transformers classifiers return an output object; guidance wants the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def _split(ref: str) -> tuple[str, str]:
    for source in ("timm", "torchvision", "hf"):
        if ref.startswith(source + ":"):
            return source, ref[len(source) + 1 :]
    return "file", ref


def _torchvision_weights(name: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        return None


def _is_folder(name: str) -> bool:
    return is_remote(name) or os.path.isdir(name) or name.startswith(("/", "."))


def check_classifier(
    config: ClassifierGuidanceConfig, checks: Checks | None = None, image_shape: tuple[int, int, int] | None = None
) -> None:
    """Static checks: the library knows the name, weights / files / folders / label files exist, hub ids resolve;
    with `image_shape`, library models take its channels and classifier files are probed with such an image."""
    checks = checks or Checks()
    source, name = _split(config.model)
    if isinstance(config.labels, str) and checks.reachable(config.labels, "label file"):
        read_labels(config.labels, checks.storage_options)
    if source == "file":
        if not checks.reachable(config.model, "classifier file"):
            return
        if not ref_exists(config.model, checks.storage_options):
            raise ModelLoadError(f"classifier file not found: {config.model}")
        if image_shape is not None:
            load_torchscript_classifier(config.model, "cpu", None, image_shape, **checks.storage_options)
        return
    check_rgb(image_shape, f"classifier {config.model}")
    if source == "timm":
        import timm

        if name.startswith(HF_HUB):
            from timm.models import load_model_config_from_hf

            checks.hub_lookup(name, "timm config of", lambda: load_model_config_from_hf(name.removeprefix(HF_HUB)))
        elif not timm.is_model(name):
            raise ModelLoadError(f"unknown timm model {name!r} (see timm.list_models())")
    elif source == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ModelLoadError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
        enum = _torchvision_weights(name)
        if config.weights is None or (enum is not None and config.weights in enum.__members__):
            return
    elif _is_folder(name):
        if not checks.exists(f"{name.rstrip('/')}/config.json", "transformers folder config"):
            raise ModelLoadError(f"transformers folder {name} has no config.json")
    else:
        from huggingface_hub import hf_hub_download

        checks.hub_lookup(name, "transformers config of", lambda: hf_hub_download(name, "config.json"))
    if config.weights and not checks.exists(config.weights, "classifier weights"):
        raise ModelLoadError(f"classifier weights not found: {config.weights}")


def load_classifier(
    config: ClassifierGuidanceConfig,
    device: torch.device | str = "cpu",
    storage_options: dict[str, Any] | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> ClassifierGuidance:
    """A frozen ClassifierGuidance for a spec; the spec's labels / input_size / mean / std override the model's.
    `image_shape` (C, H, W): the images it will judge, for files that do not say what they take."""
    opts = storage_options or {}
    check_classifier(config, Checks(opts))
    source, name = _split(config.model)
    labels = read_labels(config.labels, opts)
    if source == "file":
        loaded = load_torchscript_classifier(config.model, device, None, image_shape, **opts)
        parts = _Parts(loaded.model, loaded.preprocess, loaded.labels, loaded.num_classes)
        if config.input_size:
            parts.num_classes = None  # probe again at the new size
    else:
        if config.num_classes and not config.weights:
            raise InvalidInput("num_classes needs a checkpoint in 'weights' (library weights keep their own head)")
        loader = {"timm": _timm, "torchvision": _torchvision, "hf": _transformers}[source]
        try:
            parts = loader(name, config, labels, opts)
        except (InvalidInput, ModelLoadError):
            raise
        except Exception as exc:  # downloads, bad checkpoints and head mismatches surface as many types
            raise ModelLoadError(f"could not load classifier {config.model}: {type(exc).__name__}: {exc}") from None
    model = parts.model.to(device).float().eval()  # ClassifierGuidance freezes it; eval now for the probe
    preprocess = _overridden(parts.preprocess, config)
    num_classes = parts.num_classes
    if num_classes is None:
        frame = image_shape or (preprocess.channels, *(preprocess.size or (32, 32)))
        num_classes = probe_classes(model, preprocess, tuple(frame), device, config.model, "its eval transform")
    labels = labels or parts.labels
    if labels is not None and len(labels) != num_classes:
        raise ModelLoadError(f"classifier {config.model} has {num_classes} classes but {len(labels)} labels")
    return ClassifierGuidance(model, num_classes, preprocess, labels, config.crops.build()).to(device)


def _overridden(preprocess: ImageTransform, config: ClassifierGuidanceConfig) -> ImageTransform:
    """The spec's input_size / mean / std on a model's transform (transformers apply mean/std in the processor)."""
    if not isinstance(preprocess, Preprocess):
        return preprocess
    if config.input_size:
        preprocess = preprocess.with_size(tuple(config.input_size))
    changes = {k: tuple(getattr(config, k)) for k in ("mean", "std") if getattr(config, k) is not None}
    return replace(preprocess, **changes) if changes else preprocess


def _head_size(config: ClassifierGuidanceConfig, labels: list[str] | None) -> dict[str, int]:
    n = config.num_classes or (len(labels) if labels else None)
    return {"num_classes": n} if n else {}


def _timm(name: str, config: ClassifierGuidanceConfig, labels: list[str] | None, opts: dict[str, Any]) -> _Parts:
    import timm
    from timm.data import resolve_data_config

    if config.weights:
        model = timm.create_model(name, pretrained=False, **_head_size(config, labels))
        model.load_state_dict(load_weights(config.weights, opts), strict=True)
        own = None  # the pretrained cfg's label names describe timm's weights, not this checkpoint
    else:
        model = timm.create_model(name, pretrained=True)
        own = model.pretrained_cfg.get("label_names")
    preprocess = from_timm(resolve_data_config({}, model=model))
    return _Parts(model, preprocess, list(own) if own else None)


def _torchvision(name: str, config: ClassifierGuidanceConfig, labels: list[str] | None, opts: dict[str, Any]) -> _Parts:
    import torchvision
    from torchvision.transforms._presets import ImageClassification

    enum = _torchvision_weights(name)
    if config.weights is None or (enum is not None and config.weights in enum.__members__):
        if enum is None:
            raise ModelLoadError(f"torchvision model {name} has no pretrained weights; give a checkpoint in 'weights'")
        weights = enum[config.weights or "DEFAULT"]
        model = torchvision.models.get_model(name, weights=weights)
        return _Parts(model, from_torchvision(weights.transforms()), list(weights.meta["categories"]))
    model = torchvision.models.get_model(name, weights=None, **_head_size(config, labels))
    model.load_state_dict(load_weights(config.weights, opts), strict=True)
    # the architecture's default weights' transform, or torchvision's classification default for one it ships none for
    transform = enum.DEFAULT.transforms() if enum is not None else ImageClassification(crop_size=224)
    return _Parts(model, from_torchvision(transform), None)


_PLACEHOLDER = re.compile(r"LABEL_\d+")  # transformers' id2label when a model was saved without labels


def _transformers(name: str, config: ClassifierGuidanceConfig, labels: list[str] | None, opts: dict[str, Any]) -> _Parts:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = local_copy(name, opts)
    model = AutoModelForImageClassification.from_pretrained(path, dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(path, backend="torchvision")
    id2label = model.config.id2label
    own = [id2label[i] for i in range(len(id2label))]
    if all(_PLACEHOLDER.fullmatch(label) for label in own):
        own = None
    preprocess = ProcessorTransform(processor, config.mean, config.std)
    return _Parts(_LogitsOf(model), preprocess, own, model.config.num_labels)
