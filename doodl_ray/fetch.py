"""Resolve a model or file reference (local path, hub id, or any fsspec URI such as s3://) to a local path.

Remote folders are copied once into a cache keyed by the URI, behind a completion marker, so a crash
mid-download is never mistaken for a complete copy."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

DEFAULT_CACHE = Path(os.environ.get("DOODL_RAY_CACHE", Path.home() / ".cache" / "doodl-ray"))


def is_remote(ref: str) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://, ...)."""
    return "://" in ref and not ref.startswith("file://")


def local_copy(ref: str, storage_options: dict[str, Any] | None = None, cache_dir: Path | None = None) -> str:
    """Return a local path for `ref`; remote files and folders are downloaded into the cache first."""
    if not is_remote(ref):
        return ref.removeprefix("file://")
    cache = Path(cache_dir or DEFAULT_CACHE)
    dest = cache / hashlib.sha256(ref.encode()).hexdigest()[:24]
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    done = dest / ".complete"
    if done.exists():
        return str(dest / name)
    fs, path = fsspec.core.url_to_fs(ref, **(storage_options or {}))
    if not fs.exists(path):
        raise FileNotFoundError(f"{ref} does not exist")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
    try:
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(tmp / name), recursive=True)
        else:
            fs.get(path, str(tmp / name))
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest / name)
