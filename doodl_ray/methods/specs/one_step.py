"""One-step classifier guidance (method `one-step`, implemented in methods/one_step.py)."""

from __future__ import annotations

from doodl_ray.methods.registry import MethodPlugin, register_method

register_method(MethodPlugin(
    "one-step", "x0 guidance on a single DDIM chain, as diffusers' CLIP-guided pipeline runs it (a baseline)",
    "doodl_ray.methods.one_step:one_step", gradient="one-step",
    least_budget=lambda config, sample, prior: 2 * sample,  # a forward and a VJP per step
))
