"""search-refine's settings (implemented in methods/search_refine.py)."""

from __future__ import annotations

from pydantic import Field

from doodl_ray.config import StrictModel
from doodl_ray.methods.registry import MethodPlugin, register_method


class SearchConfig(StrictModel):
    """search-refine: sample candidates, rank them (guide loss + prior.selection * prior), then run DOODL
    from the best ones in turn with what is left of the budget."""

    candidates: int | None = Field(None, ge=1, description="Candidates per item; default: `fraction` of the budget.")
    fraction: float = Field(0.25, gt=0, le=1, description="Share of the budget spent on the search.")
    starts: int = Field(1, ge=1, description="DOODL runs from the best candidates, in rank order, each stopping early.")
    prune: bool = Field(
        True, description="Successive halving: candidates scored by their one-step estimate at 1/6, 1/3 and 2/3 of "
        "the steps, each item keeping its better half (about 2.7x the candidates per budget); false: full samples.",
    )


register_method(MethodPlugin(
    "search-refine", "pruned search over candidate noises, then DOODL from the best ones with the rest of the budget",
    "doodl_ray.methods.search_refine:search_refine", SearchConfig, reads=("doodl",), gradient="exact",
    block_name="search",
))
