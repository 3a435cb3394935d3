"""CLIP guidance with open_clip models: text targets and reference-image targets, several models weighted.

Each model sees images through its own eval transform, open_clip's `preprocess_cfg` for its tag, folder or hub
repo (size, `resize_mode`: shortest side + centre crop for OpenAI/LAION ViTs and EVA02, squash for SigLIP, CLIPA
and DFN-378; bicubic; mean/std: LAION and OpenAI checkpoints do not share constants in general), reproduced
differentiably by `preprocess.Preprocess`. Crops and reference images go through the same transform. Models run
in float32. The loss is the spherical distance d(a, b) = 2 * arcsin(|a^ - b^| / 2)^2 per crop, reduced over
crops as the spec says, then averaged over models with their (normalized) weights."""

from __future__ import annotations

import hashlib
import io
import math
import os
from abc import abstractmethod
from collections import OrderedDict
from typing import Any, Sequence

import fsspec
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torchvision.transforms.functional import pil_to_tensor

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import is_remote, local_copy
from doodl_ray.guidance.base import Guidance
from doodl_ray.guidance.checks import Checks
from doodl_ray.guidance.crops import MultiCrop
from doodl_ray.guidance.preprocess import Preprocess, from_open_clip
from doodl_ray.guidance.settings import ClipModelConfig

CONFIG_FILE = "open_clip_config.json"  # marks a folder in open_clip's hub layout
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
PREPROCESS_FIELDS = ("mean", "std", "interpolation", "resize_mode")  # what a tag or the spec may set


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """2 * arcsin(|a^ - b^| / 2)^2 along the last dim: the squared great-circle distance, up to scale."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


class ClipEncoder(nn.Module):
    """One frozen open_clip model with its tokenizer and its eval transform."""

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess: Preprocess, label: str):
        super().__init__()
        self.model, self.tokenizer, self.preprocess, self.label = model, tokenizer, preprocess, label

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Normalized embeddings of model inputs (already through `preprocess`), float32 [N, D]."""
        return F.normalize(self.model.encode_image(inputs).float(), dim=-1)

    def embed_images(self, images: Tensor) -> Tensor:
        """Normalized embeddings of whole images in [0, 1], any size, float32 [N, D]."""
        return self.embed_inputs(self.preprocess(images))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


class ClipGuidance(Guidance):
    """Weighted mean over CLIP models of the crop-reduced spherical distance to a per-target embedding.
    Target embeddings are computed once per target (LRU cache), never per iteration."""

    def __init__(self, encoders: Sequence[ClipEncoder], weights: Sequence[float], crops: MultiCrop, cache_size: int = 1024):
        super().__init__()
        if len(encoders) != len(weights) or not encoders:
            raise InvalidInput("CLIP guidance needs one weight per model, and at least one model")
        total = float(sum(weights))
        if not all(w > 0 for w in weights) or not math.isfinite(total):
            raise InvalidInput(f"CLIP model weights must be positive and finite, not {list(weights)}")
        self.encoders = nn.ModuleList(encoders)
        self.weights = [float(w) / total for w in weights]
        self.crops = crops
        self._cache: OrderedDict[Any, list[Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self.freeze()

    @abstractmethod
    def embed_target(self, target: Any) -> list[Tensor]:
        """Normalized target embedding [D] for each encoder."""

    def cache_key(self, target: Any) -> Any:
        """What the embedding cache keys a validated target by."""
        return target

    def _target_embeddings(self, targets: Sequence[Any]) -> list[Tensor]:
        """[B, D] target embeddings per encoder."""
        rows = []
        for target in targets:
            key = self.cache_key(target)
            if key not in self._cache:
                with torch.no_grad():
                    self._cache[key] = self.embed_target(target)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            rows.append(self._cache[key])
        return [torch.stack(per_encoder) for per_encoder in zip(*rows)]

    def loss(self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None) -> Tensor:
        batch = images.shape[0]
        total = images.new_zeros(batch, dtype=torch.float32)
        for weight, encoder, target in zip(self.weights, self.encoders, self._target_embeddings(targets)):
            embeddings = encoder.embed_inputs(self.crops.views(images, encoder.preprocess, generators))
            target = target.to(embeddings.device).repeat_interleave(embeddings.shape[0] // batch, dim=0)
            total = total + weight * self.crops.reduce(spherical_distance(embeddings, target), batch)
        return total.to(images.dtype)

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        """Weighted mean cosine similarity of the whole images to the targets."""
        total = images.new_zeros(images.shape[0], dtype=torch.float32)
        for weight, encoder, target in zip(self.weights, self.encoders, self._target_embeddings(targets)):
            embeddings = encoder.embed_inputs(self.crops.views(images, encoder.preprocess, None))
            total = total + weight * (embeddings * target.to(embeddings.device)).sum(dim=-1)
        return {self.name: total}


class ClipTextGuidance(ClipGuidance):
    """Target: the item's guidance text, or its generation prompt when it has none."""

    name = "clip-text"

    def validate_target(self, target: Any, prompt: str | None = None) -> str:
        text = prompt if target is None else target
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"CLIP text guidance needs a text target or a prompt, got {text!r}")
        return text

    def embed_target(self, target: str) -> list[Tensor]:
        return [encoder.embed_texts([target])[0] for encoder in self.encoders]


class ClipImageGuidance(ClipGuidance):
    """Target: one or more reference images; the normalized mean of their normalized embeddings.
    Validated targets are tuples of encoded image bytes, so they travel with the item to any worker."""

    name = "clip-image"

    def __init__(
        self,
        encoders: Sequence[ClipEncoder],
        weights: Sequence[float],
        crops: MultiCrop,
        references: Sequence[str] = (),
        storage_options: dict[str, Any] | None = None,
    ):
        super().__init__(encoders, weights, crops)
        self.storage_options = storage_options or {}
        self.default = tuple(read_reference(r, self.storage_options) for r in references) or None

    def validate_target(self, target: Any, prompt: str | None = None) -> tuple[bytes, ...]:
        if target is None:
            if self.default is None:
                raise InvalidInput("CLIP image guidance needs reference images: an item target or spec 'references'")
            return self.default
        items = target if isinstance(target, (list, tuple)) else [target]
        if not items:
            raise InvalidInput("CLIP image guidance got an empty list of reference images")
        return tuple(read_reference(item, self.storage_options) for item in items)

    def cache_key(self, target: tuple[bytes, ...]) -> str:
        """A digest, so the cache holds embeddings, not encoded images."""
        digest = hashlib.sha256()
        for data in target:
            digest.update(hashlib.sha256(data).digest())
        return digest.hexdigest()

    def embed_target(self, target: tuple[bytes, ...]) -> list[Tensor]:
        """Each reference goes through the model's own eval transform, as generated images do."""
        pictures = [pil_to_tensor(_decode(data)).float().div(255).unsqueeze(0) for data in target]
        out = []
        for encoder in self.encoders:
            embeddings = torch.cat([encoder.embed_images(p.to(encoder.device)) for p in pictures])
            out.append(F.normalize(embeddings.mean(dim=0), dim=-1))
        return out


def read_reference(ref: Any, storage_options: dict[str, Any] | None = None) -> bytes:
    """Encoded bytes of one reference image: a path or URI, raw bytes, or a Parquet image struct
    ({'bytes': ..., 'path': ...}); checked to decode as an image. InvalidInput otherwise."""
    if isinstance(ref, dict):
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        data, where = bytes(ref), "image bytes"
    elif isinstance(ref, str):
        where = ref
        try:
            with fsspec.open(ref, "rb", **((storage_options or {}) if is_remote(ref) else {})) as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise InvalidInput(f"cannot read reference image {ref}: {type(exc).__name__}") from None
    else:
        raise InvalidInput(f"a reference image is a path, URI or bytes, not {type(ref).__name__}")
    _decode(data, where)
    return data


def _decode(data: bytes, where: str = "image bytes") -> Image.Image:
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"unreadable reference image ({where}): {exc}") from None
    return picture.convert("RGB")


def _is_folder(model: str) -> bool:
    return model.startswith(LOCAL_DIR) or is_remote(model) or os.path.isdir(model)


def _own_config(model: str) -> bool:
    """Folders and hub repos carry their own model and preprocessing config (open_clip_config.json)."""
    return model.startswith(HF_HUB) or _is_folder(model)


def check_clip_model(config: ClipModelConfig, checks: Checks | None = None) -> None:
    """Static checks before any download: a known architecture with a known tag (and matching QuickGELU, the
    classic ViT-L-14 + openai mistake), or an existing checkpoint file that says how it was trained (a tag or
    mean/std); or a folder with its config, or a hub repo whose config resolves."""
    checks = checks or Checks()
    if _own_config(config.model):
        if config.pretrained or config.tag:
            raise InvalidInput(f"CLIP {config.model} carries its own weights and preprocessing; drop 'pretrained'/'tag'")
        if config.model.startswith(HF_HUB):
            checks.hub_lookup(config.model, "open_clip config of", lambda: open_clip.get_model_config(config.model))
            return
        folder = config.model.removeprefix(LOCAL_DIR).rstrip("/")
        if not checks.exists(f"{folder}/{CONFIG_FILE}", "CLIP folder config"):
            raise ModelLoadError(f"CLIP folder {config.model} has no {CONFIG_FILE} (open_clip hub layout)")
        return
    model_cfg = open_clip.get_model_config(config.model)
    if model_cfg is None:
        raise ModelLoadError(f"unknown open_clip model {config.model!r} (see open_clip.list_models())")
    if not config.pretrained:
        raise InvalidInput(f"CLIP model {config.model} needs 'pretrained': a tag or a checkpoint file")
    tags = open_clip.list_pretrained_tags_by_model(config.model)
    if open_clip.get_pretrained_cfg(config.model, config.pretrained):
        if config.tag:
            raise InvalidInput(f"'tag' is for checkpoint files; {config.pretrained!r} is already a tag of {config.model}")
        _check_quick_gelu(config.model, config.pretrained, model_cfg)
        return
    if not checks.exists(config.pretrained, "CLIP weights"):
        raise ModelLoadError(
            f"CLIP weights {config.pretrained!r} for {config.model}: not a file and not a known tag ({', '.join(tags) or 'none'})"
        )
    if config.tag:
        if not open_clip.get_pretrained_cfg(config.model, config.tag):
            raise ModelLoadError(f"{config.tag!r} is not an open_clip tag of {config.model} ({', '.join(tags) or 'none'})")
        _check_quick_gelu(config.model, config.tag, model_cfg)
    elif not (config.mean and config.std):
        raise InvalidInput(
            f"CLIP checkpoint {config.pretrained} does not say how it was trained: give 'tag' (the {config.model} "
            f"tag it was trained like: {', '.join(tags) or 'none'}) or its 'mean' and 'std'"
        )


def _check_quick_gelu(model: str, tag: str, model_cfg: dict) -> None:
    trained = open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False)
    if trained != model_cfg.get("quick_gelu", False):
        raise InvalidInput(
            f"pretrained {tag!r} was trained with quick_gelu={trained}; "
            f"use the matching architecture (e.g. {model}-quickgelu for OpenAI weights)"
        )


def _preprocess_overrides(config: ClipModelConfig) -> dict[str, Any]:
    """The preprocessing a checkpoint file's tag names, then the spec's own fields (open_clip merges these last)."""
    tag_cfg = open_clip.get_pretrained_cfg(config.model, config.tag) if config.tag else {}
    out = {key: tag_cfg[key] for key in PREPROCESS_FIELDS if tag_cfg.get(key) is not None}
    out.update({key: getattr(config, key) for key in PREPROCESS_FIELDS if getattr(config, key) is not None})
    return out


def load_clip(
    config: ClipModelConfig, device: torch.device | str = "cpu", storage_options: dict[str, Any] | None = None
) -> ClipEncoder:
    """A frozen float32 ClipEncoder for one spec entry (checkpoint files and folders may be local or URIs)."""
    opts = storage_options or {}
    check_clip_model(config, Checks(opts))
    label = f"{config.model}/{config.pretrained}" if config.pretrained else config.model
    try:
        if _own_config(config.model):
            folder = _is_folder(config.model)
            name = LOCAL_DIR + local_copy(config.model.removeprefix(LOCAL_DIR), opts) if folder else config.model
            pretrained = None
        else:
            tag = open_clip.get_pretrained_cfg(config.model, config.pretrained)
            name, pretrained = config.model, config.pretrained if tag else local_copy(config.pretrained, opts)
        model = open_clip.create_model(
            name, pretrained=pretrained, precision="fp32", device=device, weights_only=True,
            force_preprocess_cfg=_preprocess_overrides(config),
        )  # fmt: skip
        tokenizer = open_clip.get_tokenizer(name)
    except (InvalidInput, ModelLoadError):
        raise
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError for bad weights or downloads
        raise ModelLoadError(f"could not load CLIP {label}: {type(exc).__name__}: {exc}") from None
    encoder = ClipEncoder(model.float(), tokenizer, from_open_clip(model.visual.preprocess_cfg), label)
    return encoder.to(device).eval().requires_grad_(False)
