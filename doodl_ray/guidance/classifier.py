"""Classifier guidance: cross-entropy of a frozen image classifier's logits with each item's target class."""

from __future__ import annotations

import difflib
import io
import json
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import local_copy
from doodl_ray.guidance.base import Guidance
from doodl_ray.guidance.crops import MultiCrop

METADATA_FILE = "doodl.json"  # optional TorchScript extra file: input_size, mean, std, labels


class ClassifierGuidance(Guidance):
    """Any module mapping [0, 1] NCHW images (after this object's resize and normalization) to logits."""

    name = "classifier"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
        crops: MultiCrop | None = None,
    ):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.input_size = tuple(input_size) if input_size else None
        self.labels = list(labels) if labels else None
        self.crops = crops or MultiCrop()
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0]).view(1, -1, 1, 1), persistent=False)
        self.freeze()

    def validate_target(self, target: Any, prompt: str | None = None) -> int:
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            return self.label_index(target)
        try:
            index = int(target)
        except (TypeError, ValueError):
            raise InvalidInput(f"target {target!r} is not a class index or name") from None
        if not 0 <= index < self.num_classes:
            raise InvalidInput(f"target {index} is outside the classifier's {self.num_classes} classes")
        return index

    def label_index(self, name: str) -> int:
        """Index of a class name: an exact label, else a case-insensitive match of a label or of one of its
        comma-separated aliases (ImageNet-style labels read "goldfish, Carassius auratus")."""
        if self.labels and name in self.labels:
            return self.labels.index(name)
        wanted = name.strip().lower()
        for index, label in enumerate(self.labels or []):
            if wanted == label.lower() or wanted in (alias.strip().lower() for alias in label.split(",")):
                return index
        hint = f"; close: {', '.join(difflib.get_close_matches(name, self.labels, 3))}" if self.labels else ""
        raise InvalidInput(f"class name {name!r} is not among the classifier's labels{hint}")

    def logits(self, images: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
        """Logits of every crop, [B * K, num_classes]."""
        size = self.input_size or tuple(images.shape[-2:])
        x = self.crops.crops(images, size, generators)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x.to(_param_dtype(self.model, x.dtype))).to(images.dtype)

    def loss(self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None) -> Tensor:
        logits = self.logits(images, generators)
        per_item = logits.shape[0] // images.shape[0]
        labels = torch.tensor(targets, device=images.device).repeat_interleave(per_item)
        return self.crops.reduce(F.cross_entropy(logits, labels, reduction="none"), images.shape[0])

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        """Probability of each item's target class on the whole image."""
        index = torch.tensor(targets, device=images.device).view(-1, 1)
        return {self.name: self.probabilities(images).gather(1, index).squeeze(1)}

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities of the whole, unaugmented images, [B, num_classes]."""
        return self.logits(images).softmax(dim=-1)


def load_torchscript_classifier(
    ref: str, device: torch.device | str = "cpu", crops: MultiCrop | None = None, **storage_options: Any
) -> ClassifierGuidance:
    """Load a TorchScript classifier from a path or URI. Its optional `doodl.json` extra file gives
    input_size, mean, std and labels; the class count is read off one probe forward."""
    path = local_copy(ref, storage_options)
    extra = {METADATA_FILE: ""}
    try:
        with open(path, "rb") as f:
            model = torch.jit.load(io.BytesIO(f.read()), map_location=device, _extra_files=extra)
    except FileNotFoundError:
        raise ModelLoadError(f"classifier file not found: {ref}") from None
    except Exception as exc:  # torch raises RuntimeError/ValueError variants for non-TorchScript files
        raise ModelLoadError(f"{ref} is not a TorchScript classifier ({type(exc).__name__})") from None
    meta = json.loads(extra[METADATA_FILE] or "{}")
    input_size = meta.get("input_size")
    channels = int(meta.get("channels", 3))
    probe_size = input_size or [32, 32]
    with torch.no_grad():
        probe = torch.zeros(1, channels, *probe_size, device=device)
        try:
            out = model(probe)
        except Exception as exc:
            raise ModelLoadError(f"classifier {ref} failed on a {channels}x{probe_size} probe image: {exc}") from None
    if out.ndim != 2:
        raise ModelLoadError(f"classifier {ref} returned shape {tuple(out.shape)}, expected [batch, classes]")
    return ClassifierGuidance(
        model,
        num_classes=out.shape[1],
        input_size=input_size,
        mean=meta.get("mean"),
        std=meta.get("std"),
        labels=meta.get("labels"),
        crops=crops,
    ).to(device)


def _param_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return default
