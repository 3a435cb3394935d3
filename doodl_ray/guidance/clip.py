"""CLIP guidance with open_clip models: text targets and reference-image targets, several models weighted.

Each model keeps its own input size and normalization (from open_clip's pretrained config for its tag:
LAION and OpenAI checkpoints do not share constants in general). The loss is the spherical distance
d(a, b) = 2 * arcsin(|a^ - b^| / 2)^2 per crop, reduced over crops as the spec says, then averaged over
models with their (normalized) weights."""

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
from torchvision.transforms.functional import center_crop, pil_to_tensor

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import is_remote, local_copy
from doodl_ray.guidance.base import Guidance, ref_exists
from doodl_ray.guidance.crops import MultiCrop
from doodl_ray.guidance.spec import ClipModelConfig

CONFIG_FILE = "open_clip_config.json"  # marks a folder in open_clip's hub layout
LOCAL_DIR = "local-dir:"


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """2 * arcsin(|a^ - b^| / 2)^2 along the last dim: the squared great-circle distance, up to scale."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


class ClipEncoder(nn.Module):
    """One frozen open_clip model with its tokenizer, input size and normalization constants."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        label: str,
    ):
        super().__init__()
        self.model, self.tokenizer, self.input_size, self.label = model, tokenizer, tuple(input_size), label
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def embed_images(self, images: Tensor) -> Tensor:
        """Normalized embeddings of [N, 3, *input_size] images in [0, 1], float32 [N, D]."""
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self.model.encode_image(x.to(dtype)).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts).to(self.mean.device)
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
            embeddings = encoder.embed_images(self.crops.crops(images, encoder.input_size, generators))
            target = target.to(embeddings.device).repeat_interleave(embeddings.shape[0] // batch, dim=0)
            total = total + weight * self.crops.reduce(spherical_distance(embeddings, target), batch)
        return total.to(images.dtype)

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        """Weighted mean cosine similarity of the whole images to the targets."""
        total = images.new_zeros(images.shape[0], dtype=torch.float32)
        for weight, encoder, target in zip(self.weights, self.encoders, self._target_embeddings(targets)):
            embeddings = encoder.embed_images(self.crops.crops(images, encoder.input_size, None))
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
        pictures = [_decode(data) for data in target]
        out = []
        for encoder in self.encoders:
            device = encoder.mean.device
            embeddings = torch.cat([encoder.embed_images(_square(p, encoder.input_size).to(device)) for p in pictures])
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


def _square(picture: Image.Image, size: tuple[int, int]) -> Tensor:
    """Centre square crop resized to `size`, [1, 3, *size] in [0, 1]: how the square crops of generated
    images are seen, so references and generations share geometry."""
    x = pil_to_tensor(picture).float().div(255).unsqueeze(0)
    side = min(x.shape[-2:])
    return MultiCrop(count=0).crops(center_crop(x, [side, side]), size, None)


def _is_folder(model: str) -> bool:
    return model.startswith(LOCAL_DIR) or is_remote(model) or os.path.isdir(model)


def check_clip_model(config: ClipModelConfig, storage_options: dict[str, Any] | None = None) -> None:
    """Static checks before any download: a known architecture with a known tag (and matching QuickGELU,
    the classic ViT-L-14 + openai mistake) or an existing checkpoint file; or a folder with its config."""
    opts = storage_options or {}
    if _is_folder(config.model):
        if config.pretrained:
            raise InvalidInput(f"CLIP folder {config.model} carries its own weights; drop 'pretrained'")
        folder = config.model.removeprefix(LOCAL_DIR).rstrip("/")
        if not ref_exists(f"{folder}/{CONFIG_FILE}", opts):
            raise ModelLoadError(f"CLIP folder {config.model} has no {CONFIG_FILE} (open_clip hub layout)")
        return
    model_cfg = open_clip.get_model_config(config.model)
    if model_cfg is None:
        raise ModelLoadError(f"unknown open_clip model {config.model!r} (see open_clip.list_models())")
    if not config.pretrained:
        raise InvalidInput(f"CLIP model {config.model} needs 'pretrained': a tag or a checkpoint file")
    tag_cfg = open_clip.get_pretrained_cfg(config.model, config.pretrained)
    if tag_cfg:
        if tag_cfg.get("quick_gelu", False) != model_cfg.get("quick_gelu", False):
            raise InvalidInput(
                f"pretrained {config.pretrained!r} was trained with quick_gelu={tag_cfg.get('quick_gelu', False)}; "
                f"use the matching architecture (e.g. {config.model}-quickgelu for OpenAI weights)"
            )
    elif not ref_exists(config.pretrained, opts):
        tags = open_clip.list_pretrained_tags_by_model(config.model)
        raise ModelLoadError(
            f"CLIP weights {config.pretrained!r} for {config.model}: not a file and not a known tag "
            f"({', '.join(tags) or 'none'})"
        )


def load_clip(
    config: ClipModelConfig, device: torch.device | str = "cpu", storage_options: dict[str, Any] | None = None
) -> ClipEncoder:
    """A frozen ClipEncoder for one spec entry (checkpoint files and folders may be local or URIs)."""
    opts = storage_options or {}
    check_clip_model(config, opts)
    label = f"{config.model}/{config.pretrained}" if config.pretrained else config.model
    try:
        if _is_folder(config.model):
            name, pretrained = LOCAL_DIR + local_copy(config.model.removeprefix(LOCAL_DIR), opts), None
        else:
            tag = open_clip.get_pretrained_cfg(config.model, config.pretrained)
            name, pretrained = config.model, config.pretrained if tag else local_copy(config.pretrained, opts)
        model = open_clip.create_model(name, pretrained=pretrained, device=device, weights_only=True)
        tokenizer = open_clip.get_tokenizer(name)
    except (InvalidInput, ModelLoadError):
        raise
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError for bad weights or downloads
        raise ModelLoadError(f"could not load CLIP {label}: {type(exc).__name__}: {exc}") from None
    preprocess = model.visual.preprocess_cfg
    size = preprocess["size"]
    input_size = (size, size) if isinstance(size, int) else tuple(size)
    encoder = ClipEncoder(
        model, tokenizer, input_size, config.mean or preprocess["mean"], config.std or preprocess["std"], label
    )
    return encoder.to(device).eval().requires_grad_(False)
