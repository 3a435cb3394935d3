"""Output storage through fsspec: local folders and s3:// alike.

Every write is atomic (a temporary name then a rename on disk; a single PUT, or a multipart upload that
appears only when complete, on object stores), so a crash never leaves a partial file under a final name.
Keys are relative to the output prefix and checked, so no item id can address a file outside it. Transient errors (throttling, 5xx, dropped connections, timeouts)
are retried with capped exponential backoff; permanent ones (missing bucket, access denied) are not."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import random
import tempfile
import time
import uuid
from typing import IO, Any, Callable, Iterator, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.spec import RetryConfig

T = TypeVar("T")

_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.EIO, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET}
_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "http.client")


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the same request may succeed a moment later."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS or exc.errno is None
    module = type(exc).__module__ or ""
    if module.startswith(_NETWORK_MODULES):
        status = getattr(exc, "response", {}) or {}
        code = status.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(status, dict) else None
        return code is None or code >= 500 or code == 429
    return False


def backoff_delay(policy: RetryConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): capped exponential, jittered."""
    capped = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    return capped * (1 - policy.jitter * (rng or random).random())


def with_retries(fn: Callable[[], T], policy: RetryConfig, what: str = "storage") -> T:
    """Call fn, retrying transient errors up to policy.attempts times in all."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == policy.attempts or not is_transient(exc):
                raise
            time.sleep(backoff_delay(policy, attempt))
    raise AssertionError("unreachable")


def check_key(key: str) -> str:
    """A relative key that stays under the prefix: no absolute path, no '.' or '..' segments."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"storage key {key!r} would leave the output prefix")
    return key


class Storage:
    """A prefix (local folder or object-store URI) with atomic, retried reads and writes of relative keys."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, retry: RetryConfig | None = None):
        self.uri = uri.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self.retry = retry or RetryConfig(attempts=3, base_delay=0.2, max_delay=5.0)

    def path(self, key: str) -> str:
        """The filesystem path of a key."""
        return f"{self.root}/{check_key(key)}"

    def url(self, key: str) -> str:
        """The full URI of a key, as recorded in results (s3://bucket/..., or a local path)."""
        return f"{self.uri}/{check_key(key)}"

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write atomically; returns the key's URI."""
        path = self.path(key)
        with_retries(lambda: self._write(path, data), self.retry)
        return self.url(key)

    def _write(self, path: str, data: bytes) -> None:
        if not self.local:
            self.fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{posixpath.dirname(path)}/.tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)  # os.rename within one folder: atomic
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    @contextlib.contextmanager
    def open_atomic(self, key: str) -> Iterator[IO[bytes]]:
        """A local file to stream a large object into; it lands under `key` whole when the block exits
        cleanly, and nowhere otherwise."""
        path = self.path(key)
        if self.local:  # beside the final name, so the rename is atomic
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{posixpath.dirname(path)}/.tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}"
        else:
            tmp = os.path.join(tempfile.gettempdir(), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                yield f
            if self.local:
                os.replace(tmp, path)  # within one folder: atomic
            else:
                with_retries(lambda: self.fs.put_file(tmp, path), self.retry)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def read_bytes(self, key: str) -> bytes:
        return with_retries(lambda: self.fs.cat_file(self.path(key)), self.retry)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (one ranged GET on object stores)."""
        return with_retries(lambda: self.fs.cat_file(self.path(key), start=start, end=end), self.retry)

    def open(self, key: str) -> IO[bytes]:
        """A streaming read of a large object."""
        return with_retries(lambda: self.fs.open(self.path(key), "rb"), self.retry)

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """The keys that exist, read concurrently where the filesystem can (s3fs does); missing ones are
        left out, any other error is raised (and retried when transient)."""
        if not keys:
            return {}

        def cat() -> list[Any]:
            found = self.fs.cat_ranges([self.path(k) for k in keys], None, None, on_error="return")  # whole files
            for value in found:
                if isinstance(value, Exception) and not isinstance(value, FileNotFoundError):
                    raise value
            return found

        return {k: v for k, v in zip(keys, with_retries(cat, self.retry)) if not isinstance(v, Exception)}

    def write_many(self, items: dict[str, bytes]) -> dict[str, str]:
        """Write several keys, each atomically (concurrently where the filesystem can); returns their URIs."""
        if self.local:
            return {key: self.write_bytes(key, data) for key, data in items.items()}
        with_retries(lambda: self.fs.pipe({self.path(k): data for k, data in items.items()}), self.retry)
        return {key: self.url(key) for key in items}

    def exists(self, key: str) -> bool:
        return with_retries(lambda: self.fs.exists(self.path(key)), self.retry)

    def list(self, prefix: str, suffix: str = "") -> list[str]:
        """Keys under `prefix` (recursive) ending in `suffix`, sorted; temporary files excluded."""
        base = self.path(prefix)
        self.fs.invalidate_cache()  # other processes (workers, a previous driver) write here too

        def find() -> list[str]:
            return self.fs.find(base) if self.fs.exists(base) else []

        keys = (p[len(self.root) + 1 :] for p in with_retries(find, self.retry))
        return sorted(k for k in keys if k.endswith(suffix) and not posixpath.basename(k).startswith(".tmp-"))

    def delete(self, keys: list[str]) -> None:
        """Remove these keys (missing ones ignored)."""
        for key in keys:
            try:
                with_retries(lambda: self.fs.rm_file(self.path(key)), self.retry)
            except FileNotFoundError:
                pass

    def move_many(self, moves: dict[str, str]) -> None:
        """Move each key to its new key: a rename on disk, a server-side copy and a delete on object stores.
        A source already gone counts as moved (a run finishing what a killed one began)."""
        if not moves:
            return
        if self.local:
            for source, target in moves.items():
                self.fs.makedirs(posixpath.dirname(self.path(target)), exist_ok=True)
                try:
                    os.replace(self.path(source), self.path(target))  # within one file system: atomic
                except FileNotFoundError:
                    pass
            return
        sources = [self.path(k) for k in moves]
        targets = [self.path(k) for k in moves.values()]
        with_retries(lambda: self.fs.copy(sources, targets, on_error="ignore"), self.retry)
        with_retries(lambda: self.fs.rm(sources), self.retry)

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under a prefix (used by --force)."""
        base = self.path(prefix)
        self.fs.invalidate_cache()
        if self.fs.exists(base):
            with_retries(lambda: self.fs.rm(base, recursive=True), self.retry)
