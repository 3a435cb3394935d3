"""Natural order for values shown to people (contact sheet columns, the gallery's filter choices)."""

from __future__ import annotations


def natural_key(value: object) -> tuple:
    """Numbers in numeric order, then everything else as text."""
    try:
        return (0, float(value), "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
