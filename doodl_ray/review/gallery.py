"""The gallery's query: filters, sort and page over a run's table, computed with pyarrow so that a run of
100,000 rows answers a page in milliseconds (only the page's rows ever become Python objects)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from doodl_ray.config import validation_problems
from doodl_ray.errors import InvalidInput
from doodl_ray.ordering import natural_key
from doodl_ray.review.results import RunResults


class GalleryQuery(BaseModel):
    """What the gallery's form sends (empty fields mean 'any')."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Optional[Literal["ok", "unaccepted", "failed", "rejected"]] = None
    rung: Optional[int] = Field(None, ge=1, description="An escalation ladder's rung that made the image.")
    target: Optional[str] = Field(None, max_length=1000)
    category: Optional[str] = Field(None, max_length=1000)
    by: Optional[str] = Field(None, description="Numeric column that min and max bound.")
    min: Optional[float] = None
    max: Optional[float] = None
    sort: Optional[str] = Field(None, description="Numeric column to sort by (default: shard order).")
    order: Literal["asc", "desc"] = "asc"
    page: int = Field(1, ge=1)
    per_page: int = Field(48, ge=1, le=500)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("order", "page", "per_page", mode="before")
    @classmethod
    def _defaults(cls, value: Any, info) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @classmethod
    def parse(cls, args: Mapping[str, str], run: RunResults) -> "GalleryQuery":
        """A query from request arguments; InvalidInput names what is wrong."""
        try:
            query = cls.model_validate(dict(args))
        except ValidationError as exc:
            raise InvalidInput(f"bad gallery query: {validation_problems(exc, 'query')}") from None
        for name in ("by", "sort"):
            column = getattr(query, name)
            if column is not None and column not in run.numeric_columns:
                raise InvalidInput(f"bad gallery query: {name}={column!r} is not one of {', '.join(run.numeric_columns)}")
        if (query.min is not None or query.max is not None) and query.by is None:
            raise InvalidInput("bad gallery query: min/max need a column (by)")
        return query

    def args(self, **changes: Any) -> dict[str, Any]:
        """This query's non-default fields, with changes (for links to other pages or sorts)."""
        fields = {**self.model_dump(exclude_defaults=True), **changes}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Page:
    """One page of matching rows."""

    rows: list[dict[str, Any]]
    total: int  # rows in the run
    matched: int  # rows the filters keep
    page: int
    pages: int


def gallery_page(run: RunResults, query: GalleryQuery) -> Page:
    """Filter, sort and cut one page out of the run's table."""
    table = run.table
    mask = None
    for column, value in (("status", query.status), ("target", query.target), ("category", query.category),
                          ("rung", query.rung)):
        if value is not None and column in table.column_names:
            mask = _and(mask, pc.equal(table[column], value))
        elif value is not None:
            mask = pa.array([False] * table.num_rows)
    if query.by is not None:
        values = pc.cast(table[query.by], pa.float64())
        if query.min is not None:
            mask = _and(mask, pc.greater_equal(values, query.min))
        if query.max is not None:
            mask = _and(mask, pc.less_equal(values, query.max))
    matched = table if mask is None else table.filter(pc.fill_null(mask, False))
    pages = max(1, math.ceil(matched.num_rows / query.per_page))
    page = min(query.page, pages)
    start = (page - 1) * query.per_page
    if query.sort is not None:
        order = "descending" if query.order == "desc" else "ascending"
        indices = pc.array_sort_indices(matched[query.sort], order=order, null_placement="at_end")
        rows = matched.take(indices[start:start + query.per_page])
    else:
        rows = matched.slice(start, query.per_page)
    shown = rows.drop_columns([c for c in ("history",) if c in rows.column_names])
    return Page(shown.to_pylist(maps_as_pydicts="strict"), table.num_rows, matched.num_rows, page, pages)


def _and(mask: pa.ChunkedArray | None, condition: pa.ChunkedArray) -> pa.ChunkedArray:
    return condition if mask is None else pc.and_kleene(mask, condition)


def rungs(run: RunResults) -> list[int]:
    """The ladder rungs that made the run's images (none outside a ladder), for the filter form."""
    if "rung" not in run.table.column_names:
        return []
    return sorted(pc.unique(pc.drop_null(run.table["rung"])).to_pylist())


def distinct(run: RunResults, column: str, limit: int = 200) -> list[str]:
    """Up to `limit` distinct values of a text column, for the filter form's suggestions."""
    if column not in run.table.column_names:
        return []
    values = pc.unique(pc.drop_null(run.table[column])).to_pylist()
    return sorted(values, key=natural_key)[:limit]
