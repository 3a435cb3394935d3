"""Static checks of guidance references that need no torch and no weights: what exists, what a check may
reach (offline: no remote storage, no model hub), and library errors as one readable line. Specs and
`doodl-ray validate` use these before any model is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import fsspec

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import is_remote


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


ImageShape = tuple[int, int, int]
"""(channels, height, width) of the images the diffusion model decodes to."""


def check_rgb(image_shape: ImageShape | None, what: str) -> None:
    """RGB models take RGB images, or one-channel ones, repeated to RGB as PIL's convert("RGB") does."""
    if image_shape is not None and image_shape[0] not in (1, 3):
        raise InvalidInput(f"{what} takes RGB images; the diffusion model makes {image_shape[0]}-channel images")
