"""One unguided sample (method `none`, implemented in methods/none.py)."""

from __future__ import annotations

from doodl_ray.methods.registry import MethodPlugin, register_method

register_method(MethodPlugin(
    "none", "one unguided sample from the item's own noise", "doodl_ray.methods.none:none", guided=False,
))
