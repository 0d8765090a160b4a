"""huabu (画布): an offline-first Stable Diffusion studio built on diffusers."""

__version__ = "0.1.0"
