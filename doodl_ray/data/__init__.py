"""Bundled public prompt and label sets (sources and terms of use: README.md in this folder).

Label sets are class names in each dataset's canonical index order, so a classifier trained with that
labelling can take targets by name; prompt sets keep their categories for per-category reports."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

LABEL_SETS = {
    "cub-200": "cub-classes.csv",
    "stanford-dogs": "stanford-dogs-classes.csv",
    "fgvc-aircraft": "fgvc-aircraft-classes.csv",
    "imagenet": "imagenet-classes.csv",
}
PROMPT_SETS = {"drawbench": "drawbench.csv"}


def _rows(file: str) -> list[dict[str, str]]:
    with open(DATA_DIR / file, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@lru_cache(maxsize=None)
def label_set(name: str) -> tuple[str, ...]:
    """Class names of a bundled label set, index order. KeyError names the sets there are."""
    if name not in LABEL_SETS:
        raise KeyError(f"no bundled label set {name!r} (bundled: {', '.join(sorted(LABEL_SETS))})")
    rows = _rows(LABEL_SETS[name])
    assert [int(r["index"]) for r in rows] == list(range(len(rows))), f"{name}: indices out of order"
    return tuple(r["class_name"] for r in rows)


def prompt_set(name: str) -> list[dict[str, str]]:
    """Rows of a bundled prompt set ({id, prompt, category}), source order."""
    if name not in PROMPT_SETS:
        raise KeyError(f"no bundled prompt set {name!r} (bundled: {', '.join(sorted(PROMPT_SETS))})")
    return _rows(PROMPT_SETS[name])
