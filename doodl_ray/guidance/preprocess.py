"""Each guidance model's own eval transform, as one differentiable map from generated images to model inputs.

Conventions every guide and loader follows:
- Guides take float NCHW images in [0, 1]. Each model sees them through the eval transform of the library it
  comes from, read from the model's own config: open_clip's `preprocess_cfg`, timm's `resolve_data_config`,
  torchvision's `weights.transforms()`, a transformers image processor, or a classifier file's `doodl.json`.
- `Preprocess` reproduces the PIL pipelines of open_clip, timm and torchvision: resize with the library's own
  size arithmetic, centre crop (or pad), then x * scale, channel order, (x - mean) / std. Bilinear and bicubic are
  torch's antialiased kernels, which are PIL's (bicubic a = -0.5, support widened when shrinking), so the view
  equals the library's on the same picture as a PIL image to uint8 rounding, and every input pixel that the
  library's view covers receives gradient. Nearest is PIL's pixel-centre rule.
- `ProcessorTransform` runs a transformers image processor (torchvision backend) on the tensors themselves, so
  its own resize rules (`crop_pct`, `resample`), centre crop, `do_rescale`, `do_normalize` and
  `do_flip_channel_order` apply exactly; it is differentiable end to end.
- One-channel images are repeated to three channels for three-channel models, as PIL's convert("RGB") does.
- Augmentation crops (`crops.MultiCrop`) are cut from the image first; each then goes through the same transform
  as an image of its own. Reference images (CLIP image guidance) go through it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from doodl_ray.errors import ModelLoadError

Interpolation = Literal["bilinear", "bicubic", "nearest"]
ResizeRule = Literal["shortest", "cover", "fit", "squash"]
_TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


class ImageTransform:
    """Images in [0, 1], [N, C, H, W] -> model inputs. `size` is the model's input (H, W) for a square image."""

    size: tuple[int, int] | None
    channels: int

    def __call__(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def for_frame(self, frame: tuple[int, int]) -> "ImageTransform":
        """The transform for images of this (H, W); only transforms without a size of their own depend on it."""
        return self


@dataclass(frozen=True)
class Preprocess(ImageTransform):
    """Resize, centre crop and normalize, with each library's rules (`size` None: the image's own size).

    Resize rules, to `resize` (default `size`): `shortest` scales the short side to resize[0] and truncates the
    long side (torchvision `Resize(int)`, transformers `shortest_edge`); `cover` / `fit` scale so the image covers /
    fits in `resize`, sides rounded (timm/open_clip `ResizeKeepRatio`); `squash` resizes to exactly `resize`.
    The centre crop to `size` offsets by round(d / 2) (torchvision, timm, open_clip) or floor (transformers), and
    pads with `fill` where the crop is larger than the image."""

    size: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None
    rule: ResizeRule = "squash"
    interpolation: Interpolation = "bilinear"
    crop_offset: Literal["round", "floor"] = "round"
    fill: tuple[float, ...] = (0.0,)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0  # values the model was fed per unit of [0, 1] (255: raw 0..255 pixels)
    bgr: bool = False
    channels: int = 3

    def __post_init__(self) -> None:
        if self.interpolation not in _TORCH_MODES:
            raise ModelLoadError(f"interpolation {self.interpolation!r} has no differentiable equivalent here "
                                 f"(supported: {', '.join(_TORCH_MODES)})")

    def for_frame(self, frame: tuple[int, int]) -> "Preprocess":
        return self if self.size is not None else replace(self, size=tuple(frame))

    def with_size(self, size: tuple[int, int]) -> "Preprocess":
        """The same framing (resize-to-crop ratio, rule, normalization) at another input size."""
        if self.size is None or self.resize is None:
            return replace(self, size=tuple(size))
        resize = tuple(int(r * new / old) for r, new, old in zip(self.resize, size, self.size))
        return replace(self, size=tuple(size), resize=resize)

    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1 and self.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        size = self.size or tuple(images.shape[-2:])
        x = _resize(images, resized_shape(tuple(images.shape[-2:]), self.resize or size, self.rule), self.interpolation)
        x = _center_crop(x, size, self.crop_offset, self.fill)
        if self.scale != 1.0:
            x = x * self.scale
        if self.bgr:
            x = x.flip(1)
        return (x - _channel_values(self.mean, x)) / _channel_values(self.std, x)


def resized_shape(shape: tuple[int, int], target: tuple[int, int], rule: ResizeRule) -> tuple[int, int]:
    """The (H, W) an image of `shape` is resized to, in the integer arithmetic of the library the rule comes from."""
    height, width = shape
    if rule == "squash":
        return tuple(target)
    if rule == "shortest":
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = target[0], int(target[0] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    ratios = (height / target[0], width / target[1])
    ratio = min(ratios) if rule == "cover" else max(ratios)
    return round(height / ratio), round(width / ratio)


def _resize(images: Tensor, size: tuple[int, int], interpolation: Interpolation) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    mode = _TORCH_MODES[interpolation]
    return F.interpolate(images, size=size, mode=mode, **({} if mode == "nearest-exact" else {"antialias": True}))


def _center_crop(images: Tensor, size: tuple[int, int], offset: str, fill: Sequence[float]) -> Tensor:
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        top, left = max(crop_h - height, 0) // 2, max(crop_w - width, 0) // 2
        canvas = _channel_values(tuple(fill), images).expand(
            images.shape[0], images.shape[1], max(height, crop_h), max(width, crop_w)
        ).clone()
        canvas[..., top : top + height, left : left + width] = images
        images, (height, width) = canvas, canvas.shape[-2:]
    half = (lambda d: int(round(d / 2.0))) if offset == "round" else (lambda d: int(d / 2.0))
    top, left = half(height - crop_h), half(width - crop_w)
    return images[..., top : top + crop_h, left : left + crop_w]


@lru_cache(maxsize=64)
def _channel_tensor(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def _channel_values(values: tuple[float, ...], like: Tensor) -> Tensor:
    return _channel_tensor(tuple(float(v) for v in values), like.device, like.dtype)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[-2]), int(size[-1]))


def _triple(values: float | Sequence[float]) -> tuple[float, ...]:
    return (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)


def from_open_clip(cfg: Mapping[str, Any]) -> Preprocess:
    """open_clip's eval `image_transform` for a model's `preprocess_cfg` (size, mean, std, interpolation,
    resize_mode, fill_color). Its non-square `shortest` path (ResizeKeepRatio) is always bicubic, as there."""
    size = _pair(cfg["size"])
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    mode = cfg.get("resize_mode") or "shortest"
    if mode == "squash":
        rule = "squash"
    elif mode == "longest":
        rule = "fit"
    elif size[0] == size[1]:
        rule = "shortest"
    else:
        rule, interpolation = "cover", "bicubic"
    return Preprocess(
        size=size, rule=rule, interpolation=interpolation, fill=(cfg.get("fill_color", 0) / 255,),
        mean=_triple(cfg["mean"]), std=_triple(cfg["std"]),
    )  # fmt: skip


def from_timm(cfg: Mapping[str, Any]) -> Preprocess:
    """timm's `transforms_imagenet_eval` for a `resolve_data_config` dict: resize to floor(size / crop_pct) by
    `crop_mode` (center: short side; squash; border: fit and pad with the mean colour), then centre crop."""
    from timm.data.constants import DEFAULT_CROP_PCT

    channels, size = int(cfg["input_size"][0]), _pair(cfg["input_size"])
    crop_pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    resize = tuple(math.floor(x / crop_pct) for x in size)
    mean, mode = _triple(cfg["mean"]), cfg.get("crop_mode") or "center"
    if mode == "squash":
        rule, fill = "squash", (0.0,)
    elif mode == "border":
        rule, fill = "fit", tuple(round(255 * v) / 255 for v in mean)
    else:
        rule, fill = ("shortest" if resize[0] == resize[1] else "cover"), (0.0,)
    return Preprocess(
        size=size, resize=resize, rule=rule, interpolation=cfg.get("interpolation", "bilinear"), fill=fill,
        mean=mean, std=_triple(cfg["std"]), channels=channels,
    )  # fmt: skip


def from_torchvision(transform: Any) -> Preprocess:
    """torchvision's `ImageClassification` preset (what `weights.transforms()` returns): resize the short side to
    resize_size, centre crop crop_size, normalize."""
    from torchvision.transforms._presets import ImageClassification

    if not isinstance(transform, ImageClassification):
        raise ModelLoadError(f"torchvision weights with a {type(transform).__name__} transform are not image classifiers")
    crop, resize = transform.crop_size[0], transform.resize_size[0]
    return Preprocess(
        size=(crop, crop), resize=(resize, resize), rule="shortest", interpolation=transform.interpolation.value,
        mean=_triple(transform.mean), std=_triple(transform.std),
    )  # fmt: skip


class ProcessorTransform(ImageTransform):
    """A transformers image processor with the torchvision backend, run on the image tensors (scaled to 0..255,
    as from a PIL image): the processor's own resize, centre crop, rescale, normalization and channel order.
    `mean` / `std` override the processor's `image_mean` / `image_std`."""

    channels = 3

    def __init__(self, processor: Any, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        from transformers.image_processing_backends import TorchvisionBackend

        if not isinstance(processor, TorchvisionBackend):
            raise ModelLoadError(f"image processor {type(processor).__name__} has no torchvision backend to run on tensors")
        self.processor = processor
        self.overrides = {k: list(v) for k, v in (("image_mean", mean), ("image_std", std)) if v}
        size = dict(processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size)
        side = size.get("shortest_edge")
        self.size = (side, side) if side else (size["height"], size["width"])

    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        out = self.processor(
            list(images * 255), input_data_format="channels_first", return_tensors="pt", **self.overrides
        )
        return out["pixel_values"]
