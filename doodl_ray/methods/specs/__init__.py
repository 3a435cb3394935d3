"""The built-in methods' declarations and settings, one module each; importing this package registers them.
Torch-free: each names the module that implements it, imported when the method first runs."""

from doodl_ray.methods.specs import (  # noqa: F401
    best_of_n, das, doodl, lookahead, noise_mcmc, none, one_step, particles, search_refine,
)
