"""What a model reference is, from its small JSON config files alone (no weights): its family and the
images it makes. The driver and `doodl-ray validate` use this before any actor starts, so a missing model
folder or an unsupported family is an error there, and a classifier's input can be checked against the
images it will see."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.fetch import is_remote
from doodl_ray.models.families import FAMILIES, family_of, pixel_geometry, supported_families

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelInfo:
    family: str  # a registered family's name, or "pixel-flow" (a bare UNet2DModel with a flow scheduler)
    image_shape: tuple[int, int, int]  # (C, H, W) of the decoded images at the native size
    latent_scale: int  # image pixels per latent pixel (1 for pixel models)
    size_multiple: int  # image sides must be multiples of this


class _Skipped(Exception):
    """A remote check that cannot run here (offline)."""


def _read_json(ref: str, name: str, storage_options: dict[str, Any], offline: bool) -> dict[str, Any] | None:
    """A JSON file inside a model folder, local, remote or on the hub; None if the folder has no such file."""
    if is_remote(ref):
        if offline:
            raise _Skipped(f"model {ref} not checked (remote storage; offline)")
        fs, path = fsspec.core.url_to_fs(ref, **storage_options)
        target = f"{path.rstrip('/')}/{name}"
        return json.loads(fs.cat_file(target)) if fs.exists(target) else None
    folder = Path(ref.removeprefix("file://"))
    if folder.exists():
        return json.loads((folder / name).read_text()) if (folder / name).is_file() else None
    if not HUB_ID.match(ref):
        raise ModelLoadError(f"model {ref}: no such folder (and not a hub id such as org/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(ref, name, local_files_only=offline)).read_text())
    except LocalEntryNotFoundError:  # no cached copy and no hub (offline, HF_HUB_OFFLINE): a subclass of the next
        raise _Skipped(f"model {ref} not checked (hub id; offline)") from None
    except EntryNotFoundError:
        return None
    except Exception as exc:  # offline without a cached copy, unknown repo, network: many types
        if offline or "offline" in str(exc).lower() or "local_files_only" in str(exc):
            raise _Skipped(f"model {ref} not checked (hub id; offline)") from None
        raise ModelLoadError(f"model {ref}: not a local folder, and the hub says {type(exc).__name__}") from None


def inspect_model(ref: str, storage_options: dict[str, Any] | None = None, offline: bool = False) -> ModelInfo | None:
    """The family and native image shape of a model reference; None when offline and it cannot be read.
    ModelLoadError (one line) for a missing folder or an unsupported family."""
    try:
        return _inspect(ref, storage_options or {}, offline)
    except _Skipped:
        return None


def check_model(ref: str, storage_options: dict[str, Any] | None = None, offline: bool = False) -> list[str]:
    """Static checks of a model reference; returns the remote checks it skipped (offline), raises
    ModelLoadError for a reference that is not a model of a supported family."""
    try:
        _inspect(ref, storage_options or {}, offline)
    except _Skipped as skipped:
        return [str(skipped)]
    return []


def _inspect(ref: str, opts: dict[str, Any], offline: bool) -> ModelInfo:
    index = _read_json(ref, "model_index.json", opts, offline)
    if index is None:
        config = _read_json(ref, "config.json", opts, offline)
        if config is None or config.get("_class_name") != "UNet2DModel":
            raise ModelLoadError(f"model {ref} has neither model_index.json nor a UNet2DModel config.json")
        scheduler = _read_json(ref, "scheduler_config.json", opts, offline) or {}
        flow = scheduler.get("_class_name") == "FlowMatchEulerDiscreteScheduler"
        return ModelInfo("pixel-flow" if flow else "pixel", *pixel_geometry(config))
    family = family_of(index.get("_class_name", ""))
    if family is None:
        raise ModelLoadError(f"model {ref}: {index.get('_class_name')!r} is not a supported family "
                             f"(supported: {supported_families()})")
    network = _read_json(ref, f"{family.network}/config.json", opts, offline) or {}
    vae = (_read_json(ref, "vae/config.json", opts, offline) or {}) if family.vae else {}
    return model_info(family.name, network, vae)


def model_info(family: str, network: dict[str, Any], vae: dict[str, Any]) -> ModelInfo:
    """A family's image geometry from its denoiser's and VAE's configs (models.families)."""
    return ModelInfo(family, *FAMILIES[family].geometry(network, vae))


def image_shape(info: ModelInfo, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """The decoded image shape at a requested size (default: the model's native size); InvalidInput for a
    size the model cannot make."""
    channels, native_h, native_w = info.image_shape
    h, w = height or native_h, width or native_w
    if h % info.size_multiple or w % info.size_multiple:
        raise InvalidInput(f"image size {h}x{w}: a {info.family} model makes sides that are multiples of "
                           f"{info.size_multiple}")
    return channels, h, w
