"""Item ids as users have them -> storage keys that are safe in every output format.

An id may be any non-empty string (a URL, a path, spaces, unicode). Its key names its files
(`images/<key>.png`, a tar's `<key>.png`, ...), so a key must stay one path segment under the prefix,
carry no '.' (webdataset takes everything after a basename's first dot as the extension, and
`<key>.initial.png` must never be another key's `.png`) and be short enough for any filesystem. Ids that
already are such a segment keep their name; every other id becomes a readable slug, a '~' and a hash of
the id. Readable keys never contain '~', so the two kinds never meet, and distinct ids never share a key
(the reader checks, so even a hash collision could not merge two items)."""

from __future__ import annotations

import hashlib
import re

READABLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
"""Ids used as their own key: letters, digits, '_', '-' (not first), at most 128 characters."""

_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_SLUG_CHARS = 48
_HASH_CHARS = 20  # 80 bits


def item_key(item_id: str) -> str:
    """The storage key of an item id: the id itself when READABLE, else `<slug>~<sha256 prefix>`."""
    if READABLE.match(item_id):
        return item_id
    slug = _UNSAFE_RUN.sub("_", item_id).strip("_-")[:_SLUG_CHARS] or "id"
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"{slug}~{digest}"
