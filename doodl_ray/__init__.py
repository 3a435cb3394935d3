"""doodl-ray: DOODL (direct optimization of diffusion latents) over EDICT, run at scale on Ray."""

__version__ = "0.1.0"
