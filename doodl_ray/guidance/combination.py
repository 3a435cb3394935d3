"""Weighted sum of guidance losses, each term reported on its own.

Targets: an item's target is either a mapping {term name: target} (a term it does not name gets None,
which e.g. CLIP text reads as "use the prompt") or one value shared by every term that takes a per-item
target; terms with `takes_target = False` (aesthetic) always get None. The validated target is a dict
{term name: validated target} for every term."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.base import Guidance


class CombinationGuidance(Guidance):
    """loss = sum_i weight_i * loss_i; `terms` and `scores` report each term unweighted, keyed by its name."""

    name = "combination"

    def __init__(self, terms: Sequence[tuple[str, float, Guidance]]):
        super().__init__()
        names = [name for name, _, _ in terms]
        if not terms or len(set(names)) != len(names):
            raise InvalidInput(f"a combination needs terms with unique names, got {names}")
        weights = [float(w) for _, w, _ in terms]
        if not all(w > 0 and math.isfinite(w) for w in weights):
            raise InvalidInput(f"combination weights must be positive and finite, not {weights}")
        self.guides = nn.ModuleDict({name: guide for name, _, guide in terms})
        self.weights = dict(zip(names, weights))
        self.freeze()

    def validate_target(self, target: Any, prompt: str | None = None) -> dict[str, Any]:
        if isinstance(target, Mapping):
            unknown = sorted(set(target) - set(self.guides))
            if unknown:
                raise InvalidInput(f"target names unknown combination terms {unknown}; terms are {list(self.guides)}")
            per_term = {name: target.get(name) for name in self.guides}
        else:
            per_term = {name: target if guide.takes_target else None for name, guide in self.guides.items()}
        return {name: self.guides[name].validate_target(t, prompt) for name, t in per_term.items()}

    def terms(
        self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None
    ) -> dict[str, Tensor]:
        return {name: guide.loss(images, [t[name] for t in targets], generators) for name, guide in self.guides.items()}

    def loss(self, images: Tensor, targets: Sequence[Any], generators: Sequence[torch.Generator] | None) -> Tensor:
        return sum(self.weights[name] * value for name, value in self.terms(images, targets, generators).items())

    @torch.no_grad()
    def scores(self, images: Tensor, targets: Sequence[Any]) -> dict[str, Tensor]:
        out = {}
        for name, guide in self.guides.items():
            for key, value in guide.scores(images, [t[name] for t in targets]).items():
                out[name if key == guide.name else f"{name}/{key}"] = value
        return out
