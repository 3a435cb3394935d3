"""The guidance contract: a frozen, differentiable, per-item loss on generated images."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import fsspec
import torch
from torch import Tensor, nn

from doodl_ray.errors import ModelLoadError
from doodl_ray.fetch import is_remote, local_copy


class Guidance(nn.Module, ABC):
    """A loss on images in [0, 1], NCHW, one value per item (lower is better).

    `targets[i]` is item i's target as returned by `validate_target` (a class index, a text, ...).
    `generators[i]` drives item i's random augmentation; `None` evaluates without augmentation,
    which is what scores and best-iterate selection use.
    """

    name: str = "guidance"
    takes_target: bool = True  # False: the guide's target is fixed by its spec; items must not carry one

    def freeze(self) -> "Guidance":
        """Frozen weights and eval mode: gradients flow to the image only, never to parameters."""
        self.eval()
        self.requires_grad_(False)
        return self

    @abstractmethod
    def validate_target(self, target: Any, prompt: str | None = None) -> Any:
        """Check and normalize one item's target (e.g. class name -> index); raise InvalidInput if bad.
        `prompt` is the item's generation prompt, for guides whose target may default to it."""

    @abstractmethod
    def loss(self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None) -> Tensor:
        """Per-item loss, shape [B]."""

    def terms(
        self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None
    ) -> dict[str, Tensor]:
        """Named per-item loss terms for reporting; combinations override this to report each term."""
        return {self.name: self.loss(images, targets, generators)}

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        """Per-item scores of the whole, unaugmented images for result rows: what a user reads (a probability,
        a similarity, an aesthetic score), not what is optimized. Default: the loss terms."""
        return self.terms(images, targets, None)


def evaluate(guidance: Guidance, images: Tensor, targets: Sequence[Any], prefix: str = "") -> list[dict[str, float]]:
    """One {prefix + score name: value} row per image: the guide's own scores, or those of an independent
    evaluation guidance (its targets validated by its own `validate_target`), to show gains that are not
    adversarial to the guide."""
    scores = guidance.scores(images, targets)
    return [{prefix + name: float(values[i]) for name, values in scores.items()} for i in range(images.shape[0])]


def error_line(exc: BaseException) -> str:
    """One readable line for a library error. TorchScript errors carry the program's source and its traceback
    before the error itself; the error line is the one that says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if any("TorchScript" in line for line in lines[:2]):
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception):", line)]
        if errors:
            return errors[-1]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@dataclass
class Checks:
    """What static checks may reach. Offline, checks that need remote storage (s3://, ...) or a model hub are
    not run; each is described, one line, in `skipped`."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    offline: bool = False
    skipped: list[str] = field(default_factory=list)

    def reachable(self, ref: str, what: str) -> bool:
        """Whether `ref` may be read now (False, and noted, for remote storage when offline)."""
        if self.offline and is_remote(ref):
            self.skipped.append(f"{what} {ref} (remote storage)")
            return False
        return True

    def exists(self, ref: str, what: str) -> bool:
        """Whether `ref` exists; True when it cannot be checked offline (noted in `skipped`)."""
        return not self.reachable(ref, what) or ref_exists(ref, self.storage_options)

    def hub_lookup(self, name: str, what: str, lookup: Callable[[], Any]) -> Any:
        """`lookup()` of a model hub entry, any failure one ModelLoadError line; offline: None, noted."""
        if self.offline:
            self.skipped.append(f"{what} {name} (model hub)")
            return None
        try:
            return lookup()
        except Exception as exc:  # hub clients raise many types (offline mode, missing repo, network)
            raise ModelLoadError(f"cannot look up {what} {name} on the model hub: {error_line(exc)}") from None


def ref_exists(ref: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a local path or URI names an existing file or folder (no download)."""
    options = (storage_options or {}) if is_remote(ref) else {}
    fs, path = fsspec.core.url_to_fs(ref, **options)
    return fs.exists(path)


def load_weights(ref: str, storage_options: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """A state dict from .safetensors or a plain torch file (weights_only: never unpickles code), local or URI."""
    try:
        path = local_copy(ref, storage_options)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"weights file not found: {ref}") from None
    except Exception as exc:  # safetensors/pickle raise many types for corrupt or non-weight files
        raise ModelLoadError(f"{ref} is not a weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{ref} does not hold a state dict of tensors")
    return state
