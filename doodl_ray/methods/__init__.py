"""Generation methods: one function each over the same arguments (`base.Problem`, `MethodConfig`), registered by
name with what they are (`registry.py`; the built-ins' declarations and settings in `specs/`, their
implementations beside this file). Importing this package registers the built-ins and imports no torch."""

from doodl_ray.methods import specs  # noqa: F401  (registers the built-in methods)
from doodl_ray.methods.registry import METHODS, MethodConfig, MethodPlugin, check_budget, method_plugin, register_method

__all__ = ["METHODS", "MethodConfig", "MethodPlugin", "check_budget", "method_plugin", "register_method"]
