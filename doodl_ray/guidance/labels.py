"""Class names a classifier spec gives in `labels`: a list, the name of a bundled label set
(`doodl_ray.data.LABEL_SETS`: cub-200, stanford-dogs, fgvc-aircraft, imagenet), or a text file with one
label per line, in class-index order (local or URI)."""

from __future__ import annotations

from typing import Any

import fsspec

from doodl_ray.data import LABEL_SETS, label_set
from doodl_ray.errors import InvalidInput
from doodl_ray.fetch import is_remote


def read_labels(labels: list[str] | str | None, storage_options: dict[str, Any] | None = None) -> list[str] | None:
    """The class names `labels` stands for (None: none given). InvalidInput for a missing or malformed file."""
    if labels is None or isinstance(labels, list):
        return labels
    if labels in LABEL_SETS:
        return list(label_set(labels))
    try:
        with fsspec.open(labels, "r", encoding="utf-8", **((storage_options or {}) if is_remote(labels) else {})) as f:
            lines = f.read().rstrip("\n").split("\n")
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InvalidInput(
            f"labels {labels!r}: not a bundled label set ({', '.join(sorted(LABEL_SETS))}) and not a readable "
            f"file ({type(exc).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"label file {labels} is not UTF-8 text") from None
    names = [line.strip() for line in lines]
    if not all(names):
        raise InvalidInput(f"label file {labels}: line {names.index('') + 1} is empty (one label per line)")
    return names
