"""The built-in guidance types' settings, one module each; importing this package registers them."""

from doodl_ray.guidance.specs import aesthetic, classifier, clip, combination  # noqa: F401
