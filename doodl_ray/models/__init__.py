"""Diffusers models behind one adapter interface (`base.Diffusion`), one module per family, and loading
by hub id, local folder or s3:// folder (`load.py`)."""

from doodl_ray.models.base import Diffusion
from doodl_ray.models.load import load_diffusion

__all__ = ["Diffusion", "load_diffusion"]
