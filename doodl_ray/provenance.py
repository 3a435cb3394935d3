"""Where a result came from: enough to regenerate it bit for bit on the same hardware, and to tell two runs
apart.

Each result row carries its own part (seed, the hash of its initial latents, its compute counts and
seconds); `describe` records, once per worker, the setup every row of that worker shares:

    model       a hub id with the commit the local hub cache resolves it to (offline), or a hash of the
                folder's files: their contents when local, their names, sizes and ETags when remote (no download)
    guidance    the hash of its spec, and the identity of every file the spec names (model, weights,
                pretrained checkpoint, label file, reference images); `evaluation` the same
    method      its name and the hash of its settings (MethodConfig's JSON)
    runtime     the code version, torch's version, the device and the dtype

`fingerprint` hashes that record: rows with equal fingerprints were made by the same setup."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

import fsspec
import pyarrow as pa

import doodl_ray
from doodl_ray.fetch import is_remote

HUB_PREFIXES = ("hf:", "timm:hf-hub:")  # a hub id behind a library prefix


_IDENTITY = pa.struct([("ref", pa.string()), ("sha256", pa.string()), ("revision", pa.string())])
_GUIDANCE = pa.struct([("spec_sha256", pa.string()), ("files", pa.list_(_IDENTITY))])
PROVENANCE_TYPE = pa.struct([
    ("model", _IDENTITY),
    ("guidance", _GUIDANCE),
    ("evaluation", _GUIDANCE),
    ("method", pa.struct([("name", pa.string()), ("settings_sha256", pa.string())])),
    ("runtime", pa.struct([("code_version", pa.string()), ("torch", pa.string()), ("device", pa.string()),
                           ("dtype", pa.string())])),
])
"""`describe`'s record as a Parquet struct column (a processor's own record keeps the fields it shares with
it; its fingerprint, `provenance_hash`, covers all of it)."""


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(doodl_ray.__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{doodl_ray.__version__}+{sha}" if sha else doodl_ray.__version__


def json_hash(data: Any) -> str:
    """sha256 of data as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _folder_sha256(folder: Path) -> str:
    """Hash of every file's relative path and contents; hidden entries (caches, markers) are skipped."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return json_hash([[p.relative_to(folder).as_posix(), file_sha256(p)] for p in files])


def _remote_sha256(ref: str, storage_options: dict[str, Any]) -> str:
    """Hash of the names, sizes and ETags of a remote file or folder: what the store says, no download."""
    fs, path = fsspec.core.url_to_fs(ref, **storage_options)
    entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    root = path.rstrip("/")
    return json_hash(sorted(
        [name[len(root):].lstrip("/"), info.get("size"),
         info.get("ETag") or info.get("etag") or info.get("md5") or info.get("mtime")]
        for name, info in entries.items()
    ))


def hub_revision(repo_id: str) -> Optional[str]:
    """The commit the local hub cache resolves `repo_id` to (never goes online); None when not cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except (ValueError, OSError):  # not a repo id (HFValidationError) or not cached (LocalEntryNotFoundError)
        return None


def identity(ref: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model or file reference and what pins its contents: {"ref", "sha256"} for files and folders, local
    or remote; {"ref", "revision"} for a hub id in the local cache; {"ref"} alone for anything else (a
    library model name, a pretrained tag), which the spec hash already covers."""
    if is_remote(ref):
        return {"ref": ref, "sha256": _remote_sha256(ref, storage_options or {})}
    local = Path(ref.removeprefix("file://"))
    if local.is_file():
        return {"ref": ref, "sha256": file_sha256(local)}
    if local.is_dir():
        return {"ref": ref, "sha256": _folder_sha256(local)}
    repo_id = next((ref.removeprefix(p) for p in HUB_PREFIXES if ref.startswith(p)), ref)
    revision = hub_revision(repo_id)
    return {"ref": ref, "revision": revision} if revision else {"ref": ref}


def guidance_identity(config: Any, storage_options: dict[str, Any] | None = None) -> Optional[dict[str, Any]]:
    """A guidance spec's hash and the identity of each file it names (its type's `files()`) that resolves to
    contents."""
    if config is None:
        return None
    data = config.model_dump(mode="json")
    files = [identity(ref, storage_options) for ref in dict.fromkeys(config.files())]
    return {"spec_sha256": json_hash(data), "files": [f for f in files if len(f) > 1]}


def describe(spec: Any, device: Any, dtype: Any, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The setup a worker generates with (`spec` a JobSpec; `device`, `dtype` the engine's torch ones)."""
    import torch

    device = torch.device(device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "model": identity(spec.model, storage_options),
        "guidance": guidance_identity(spec.guidance, storage_options),
        "evaluation": guidance_identity(spec.evaluation, storage_options),
        "method": {"name": spec.method.name, "settings_sha256": json_hash(spec.method.model_dump(mode="json"))},
        "runtime": {"code_version": code_version(), "torch": version("torch"), "device": hardware,
                    "dtype": str(dtype).removeprefix("torch.")},
    }


def fingerprint(setup: dict[str, Any]) -> str:
    """A short hash of a `describe` record."""
    return json_hash(setup)[:16]
