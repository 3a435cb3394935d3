"""Classifier guidance: cross-entropy of a frozen image classifier's logits with each item's target class,
and classifier files: TorchScript (`torch.jit.save`) or `torch.export` programs (`.pt2`, `torch.export.save`).

A classifier file's input is described by its optional `doodl.json` extra file (`_extra_files` in
`torch.jit.save`, `extra_files` in `torch.export.save`): `input_size` [H, W], `channels`, `mean`, `std`
(per channel, on [0, 1] values) and `labels`. The model sees the image (or each crop) resized to input_size
(antialiased bilinear), then (x - mean) / std. Whatever the file does not say comes from what the program
itself fixes (a `.pt2` program's static input shape), then from the image shape of the diffusion model it is
paired with (`image_shape`: channels and size), else 3 channels at the image's own size. The class count is read
off one probe forward; a probe that fails is one ModelLoadError line, never the program's source."""

from __future__ import annotations

import difflib
import io
import json
import zipfile
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import local_copy
from doodl_ray.guidance.base import Guidance
from doodl_ray.guidance.checks import error_line
from doodl_ray.guidance.crops import MultiCrop
from doodl_ray.guidance.preprocess import ImageTransform, Preprocess

METADATA_FILE = "doodl.json"  # optional extra file: input_size, channels, mean, std, labels
DEFAULT_PROBE = (3, 32, 32)  # a classifier's input when neither the file nor the diffusion model says


class ClassifierGuidance(Guidance):
    """Any module mapping images, after the model's own eval transform (`preprocess`), to logits."""

    name = "classifier"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        preprocess: ImageTransform | None = None,
        labels: Sequence[str] | None = None,
        crops: MultiCrop | None = None,
    ):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.preprocess = preprocess or Preprocess()
        self.labels = list(labels) if labels else None
        self.crops = crops or MultiCrop()
        self.freeze()

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The model's input (H, W); None: the image's own size."""
        return self.preprocess.size

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
        if not self.labels:
            raise InvalidInput(f"class name {name!r}: the classifier has no labels; give a class index or spec 'labels'")
        close = difflib.get_close_matches(name, self.labels, 3)
        raise InvalidInput(f"class name {name!r} is not among the classifier's labels{'; close: ' + ', '.join(close) if close else ''}")

    def logits(self, images: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
        """Logits of every crop, [B * K, num_classes]."""
        x = self.crops.views(images, self.preprocess.for_frame(tuple(images.shape[-2:])), generators)
        return self.model(x).to(images.dtype)

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


def probe_classes(
    model: nn.Module, preprocess: ImageTransform, frame: tuple[int, int, int], device: torch.device | str,
    what: str, source: str,
) -> int:  # fmt: skip
    """The class count from one forward of a blank `frame` (C, H, W) through `preprocess`; a failure or an output
    that is not [batch, classes] is one ModelLoadError line saying what was tried."""
    shape = "x".join(str(d) for d in frame)
    with torch.no_grad():
        try:
            out = model(preprocess.for_frame(frame[1:])(torch.zeros(1, *frame, device=device)))
        except Exception as exc:  # any error of the user's program
            raise ModelLoadError(f"classifier {what} failed on a {shape} image ({source}): {error_line(exc)}") from None
    if not isinstance(out, Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelLoadError(f"classifier {what} returned {got} for a {shape} image ({source}), expected [batch, classes]")
    return out.shape[1]


def load_torchscript_classifier(
    ref: str,
    device: torch.device | str = "cpu",
    crops: MultiCrop | None = None,
    image_shape: tuple[int, int, int] | None = None,
    **storage_options: Any,
) -> ClassifierGuidance:
    """A classifier file (TorchScript, or a torch.export `.pt2` program), local or URI, in float32; its input from
    its `doodl.json`, its own static input shape, or `image_shape` (C, H, W) of the images it will judge."""
    model, meta, fixed = read_classifier_file(ref, device, storage_options)
    channels, input_size, source = _input_of(meta, fixed, image_shape)
    preprocess = Preprocess(
        size=input_size, mean=tuple(meta.get("mean") or (0.0,)), std=tuple(meta.get("std") or (1.0,)), channels=channels
    )
    frame = image_shape or (channels, *(input_size or DEFAULT_PROBE[1:]))
    num_classes = probe_classes(model, preprocess, tuple(frame), device, ref, source)
    return ClassifierGuidance(model, num_classes, preprocess, meta.get("labels"), crops).to(device)


def _input_of(
    meta: dict[str, Any], fixed: tuple[int | None, ...] | None, image_shape: tuple[int, int, int] | None
) -> tuple[int, tuple[int, int] | None, str]:
    """(channels, input size, where they came from), field by field: doodl.json, the program, the image shape."""
    fixed_channels = fixed[1] if fixed else None
    fixed_size = tuple(fixed[2:]) if fixed and None not in fixed[2:] else None
    channels = meta.get("channels") or fixed_channels or (image_shape[0] if image_shape else None)
    size = meta.get("input_size") or fixed_size or (tuple(image_shape[1:]) if image_shape else None)
    if meta:
        source = f"input from its {METADATA_FILE}"
    elif fixed_channels or fixed_size:
        source = "input fixed by the program"
    elif image_shape:
        source = "no doodl.json: the diffusion model's image shape"
    else:
        source = f"no doodl.json and no image shape given: the default {'x'.join(map(str, DEFAULT_PROBE))} probe"
    return int(channels or DEFAULT_PROBE[0]), (tuple(int(s) for s in size) if size else None), source


def read_classifier_file(
    ref: str, device: torch.device | str, storage_options: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any], tuple[int | None, ...] | None]:
    """(float32 module on `device`, its doodl.json (or {}), the input shape the program fixes (None per dynamic
    dimension; None for TorchScript)). ModelLoadError in one line for a missing or foreign file."""
    try:
        path = local_copy(ref, storage_options)
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelLoadError(f"classifier file not found: {ref}") from None
    extra = {METADATA_FILE: ""}
    if ref.endswith(".pt2"):
        model, fixed = _load_exported(data, ref, device, extra)
    else:
        try:
            model = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
        except Exception as exc:  # torch raises RuntimeError/ValueError variants for non-TorchScript files
            raise ModelLoadError(
                f"{ref} is not a TorchScript classifier ({type(exc).__name__}; torch.export programs end in .pt2)"
            ) from None
        model, fixed = model.float().eval(), None
    return model, _metadata(extra[METADATA_FILE], ref), fixed


def _metadata(text: str | bytes, ref: str) -> dict[str, Any]:
    try:
        meta = json.loads(text or "{}")
    except ValueError:
        raise ModelLoadError(f"{ref}: its {METADATA_FILE} is not JSON") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{ref}: its {METADATA_FILE} is not a JSON object")
    return meta


class ExportedClassifier(nn.Module):
    """A torch.export program as a module. The program is frozen as exported (train/eval do not apply); a
    program exported with a fixed batch size runs larger batches in chunks of that size."""

    def __init__(self, module: nn.Module, batch: int | None):
        super().__init__()
        self.program, self.batch = module, batch

    def train(self, mode: bool = True) -> "ExportedClassifier":
        self.training = mode  # exported programs raise on .train()/.eval(); their mode was fixed at export
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        out = []
        for start in range(0, x.shape[0], self.batch):
            part = x[start : start + self.batch]
            pad = self.batch - part.shape[0]
            if pad:
                part = torch.cat([part, part.new_zeros(pad, *part.shape[1:])])
            out.append(self.program(part)[: self.batch - pad])
        return torch.cat(out)


_PT2_PLAIN = ("archive_format", "archive_version", "byteorder", ".data/", "models/", "extra/")  # JSON, text, ids


def _load_exported(
    data: bytes, ref: str, device: torch.device | str, extra: dict[str, Any]
) -> tuple[nn.Module, tuple[int | None, ...] | None]:
    from torch.export.graph_signature import InputKind
    from torch.export.passes import move_to_device_pass

    _check_pt2_has_no_pickles(data, ref)
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as exc:  # a foreign or damaged archive
        raise ModelLoadError(f"{ref} is not a torch.export program ({error_line(exc)})") from None
    program = move_to_device_pass(program, device)
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(user) != 1:
        raise ModelLoadError(f"{ref} takes {len(user)} inputs; a classifier takes one image batch")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user[0])
    fixed = tuple(d if isinstance(d, int) else None for d in node.meta["val"].shape)
    if len(fixed) != 4:
        raise ModelLoadError(f"{ref} takes a {len(fixed)}-d input; a classifier takes [batch, C, H, W] images")
    return ExportedClassifier(program.module(), fixed[0]).float(), fixed


def _check_pt2_has_no_pickles(data: bytes, ref: str) -> None:
    """torch.export archives can carry pickled objects (tensor subclasses, opaque constants, compiled AOTInductor
    code, sample inputs that torch retries with an unrestricted unpickler). Only raw tensors, JSON and plain
    tensor pickles are accepted, so loading a file never unpickles arbitrary objects."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{ref} is not a torch.export program (not a .pt2 archive)") from None
    with archive:
        for name in archive.namelist():
            inner = name.split("/", 1)[-1]
            folder, _, file = inner.rpartition("/")
            if folder in ("data/weights", "data/constants"):
                plain = file.startswith(("weight_", "tensor_")) or (
                    file.endswith("_config.json") and _raw_payloads(archive.read(name))
                )
            elif folder == "data/sample_inputs":
                plain = _plain_tensors(archive.read(name))
            else:
                plain = inner.startswith(_PT2_PLAIN)
            if not plain:
                raise ModelLoadError(f"refusing {ref}: {inner} may hold pickled objects (only plain programs are loaded)")


def _raw_payloads(config: bytes) -> bool:
    entries = json.loads(config).get("config", {}).values()
    return all(not e.get("use_pickle") and e.get("path_name", "").startswith(("weight_", "tensor_")) for e in entries)


def _plain_tensors(data: bytes) -> bool:
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # whatever the restricted unpickler refuses
        return False
    return True
