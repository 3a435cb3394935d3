"""Image classifiers from timm, torchvision and transformers (by name, hub id, folder or checkpoint) and
TorchScript files, all as `ClassifierGuidance` with the model's own labels, input size and normalization.

A library's pretrained weights keep their trained head: `num_classes` only applies to a checkpoint in
`weights`, because asking timm/torchvision for another head size with their weights silently replaces
the head with a random one, which is no guide at all."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import is_remote, local_copy
from doodl_ray.guidance.base import load_weights, ref_exists
from doodl_ray.guidance.classifier import ClassifierGuidance, load_torchscript_classifier
from doodl_ray.guidance.spec import ClassifierGuidanceConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class _Parts:
    """What a library tells us about a loaded classifier, before the spec's overrides."""

    model: nn.Module
    input_size: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    labels: list[str] | None
    num_classes: int | None = None  # known without a probe (TorchScript: its loader probed it)


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
    return "torchscript", ref


def _torchvision_weights(name: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (KeyError, ValueError):
        return None


def check_classifier(config: ClassifierGuidanceConfig, storage_options: dict[str, Any] | None = None) -> None:
    """Static checks: the library knows the name, the weights/TorchScript/folder exist (no weights loaded).
    A transformers hub id cannot be checked offline and is left to loading."""
    opts = storage_options or {}
    source, name = _split(config.model)
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise ModelLoadError(f"unknown timm model {name!r} (see timm.list_models())")
    elif source == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ModelLoadError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
        enum = _torchvision_weights(name)
        if config.weights is None or (enum is not None and config.weights in enum.__members__):
            return
    elif source == "hf":
        if (is_remote(name) or os.path.isdir(name)) and not ref_exists(f"{name.rstrip('/')}/config.json", opts):
            raise ModelLoadError(f"transformers folder {name} has no config.json")
        return
    if source == "torchscript" and not ref_exists(config.model, opts):
        raise ModelLoadError(f"classifier file not found: {config.model}")
    if config.weights and not ref_exists(config.weights, opts):
        raise ModelLoadError(f"classifier weights not found: {config.weights}")


def load_classifier(
    config: ClassifierGuidanceConfig, device: torch.device | str = "cpu", storage_options: dict[str, Any] | None = None
) -> ClassifierGuidance:
    """A frozen ClassifierGuidance for a spec; the spec's labels/input_size/mean/std override the model's."""
    opts = storage_options or {}
    check_classifier(config, opts)
    source, name = _split(config.model)
    crops = config.crops.build()
    if source == "torchscript":
        loaded = load_torchscript_classifier(config.model, device, crops, **opts)
        mean, std = loaded.mean.flatten().tolist(), loaded.std.flatten().tolist()
        parts = _Parts(loaded.model, loaded.input_size, mean, std, loaded.labels, loaded.num_classes)
    else:
        if config.num_classes and not config.weights:
            raise InvalidInput("num_classes needs a checkpoint in 'weights' (library weights keep their own head)")
        loader = {"timm": _timm, "torchvision": _torchvision, "hf": _transformers}[source]
        try:
            parts = loader(name, config, opts)
        except (InvalidInput, ModelLoadError):
            raise
        except Exception as exc:  # downloads, bad checkpoints and head mismatches surface as many types
            raise ModelLoadError(f"could not load classifier {config.model}: {type(exc).__name__}: {exc}") from None
    model = parts.model.to(device).eval()  # ClassifierGuidance freezes it; eval now for the probe
    input_size = tuple(config.input_size or parts.input_size)
    num_classes = parts.num_classes
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(torch.zeros(1, 3, *input_size, device=device)).shape[-1]
    labels = config.labels or parts.labels
    if labels is not None and len(labels) != num_classes:
        raise ModelLoadError(f"classifier {config.model} has {num_classes} classes but {len(labels)} labels")
    return ClassifierGuidance(
        model, num_classes, input_size, list(config.mean or parts.mean), list(config.std or parts.std), labels, crops
    ).to(device)


def _head_size(config: ClassifierGuidanceConfig) -> dict[str, int]:
    n = config.num_classes or (len(config.labels) if config.labels else None)
    return {"num_classes": n} if n else {}


def _timm(name: str, config: ClassifierGuidanceConfig, opts: dict[str, Any]) -> _Parts:
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config

    if config.weights:
        model = timm.create_model(name, pretrained=False, **_head_size(config))
        model.load_state_dict(load_weights(config.weights, opts), strict=True)
    else:
        model = timm.create_model(name, pretrained=True)
    data = resolve_data_config({}, model=model)
    subset = infer_imagenet_subset(model)
    labels = ImageNetInfo(subset).label_descriptions() if subset else None
    return _Parts(model, tuple(data["input_size"][1:]), data["mean"], data["std"], labels)


def _torchvision(name: str, config: ClassifierGuidanceConfig, opts: dict[str, Any]) -> _Parts:
    import torchvision

    enum = _torchvision_weights(name)
    if config.weights is None or (enum is not None and config.weights in enum.__members__):
        if enum is None:
            raise ModelLoadError(f"torchvision model {name} has no pretrained weights; give a checkpoint in 'weights'")
        weights = enum[config.weights or "DEFAULT"]
        model = torchvision.models.get_model(name, weights=weights)
        labels = list(weights.meta["categories"])
    else:
        weights = enum.DEFAULT if enum is not None else None
        model = torchvision.models.get_model(name, weights=None, **_head_size(config))
        model.load_state_dict(load_weights(config.weights, opts), strict=True)
        labels = None
    if weights is None:  # a checkpoint for an architecture torchvision ships no weights for: ImageNet conventions
        return _Parts(model, (224, 224), IMAGENET_MEAN, IMAGENET_STD, labels)
    preprocess = weights.transforms()
    side = preprocess.crop_size[0]
    return _Parts(model, (side, side), preprocess.mean, preprocess.std, labels)


def _transformers(name: str, config: ClassifierGuidanceConfig, opts: dict[str, Any]) -> _Parts:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = local_copy(name, opts)
    model = AutoModelForImageClassification.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = dict(size)
    side = size.get("shortest_edge")
    input_size = (side, side) if side else (size["height"], size["width"])
    id2label = model.config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    return _Parts(_LogitsOf(model), input_size, processor.image_mean, processor.image_std, labels)
