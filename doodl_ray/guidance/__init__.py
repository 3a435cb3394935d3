"""Guidance: frozen differentiable losses on images in [0, 1], one module per guide type, and their specs
(`spec.py`); each guide sees the image through its own library's eval transform (docs/guidance.md)."""
