"""How every plugin registry finds its entries: a registered name, or `package.module:name` naming a module that
registers it when imported (a method, an output format), and `module:attribute` references resolved when first
used, so registries need not import torch."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from doodl_ray.errors import InvalidInput

T = TypeVar("T")


def load_attribute(reference: str) -> Any:
    """The object `module:attribute` names (the module imported on first use)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def registered(name: str, registry: Mapping[str, T], kind: str) -> T:
    """The `kind` registered as `name`; `package.module:name` imports that module first (it registers `name`).
    Unknown names and unimportable modules are one-line errors."""
    module, _, short = name.rpartition(":")
    if name not in registry and module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InvalidInput(f"{kind} {name!r}: cannot import {module!r} ({exc})") from None
    entry = registry.get(name) or (registry.get(short) if module else None)
    if entry is None:
        raise InvalidInput(f"unknown {kind} {name!r}; one of: {', '.join(sorted(registry))}, "
                           "or package.module:name of one that module registers")
    return entry
