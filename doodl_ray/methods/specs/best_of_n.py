"""Best-of-N search (method `best-of-n`, implemented in methods/best_of_n.py)."""

from __future__ import annotations

from doodl_ray.methods.registry import MethodPlugin, register_method

register_method(MethodPlugin(
    "best-of-n", "N unguided samples, the one the guide likes best (a baseline)", "doodl_ray.methods.best_of_n:best_of_n",
))
