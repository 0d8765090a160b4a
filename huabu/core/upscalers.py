"""Upscaler names as A1111 spells them: the hires fix's latent modes and the built-in pixel resizers.

Model upscalers (ESRGAN family, in the upscalers folder) are found by huabu.engine.upscalers.
"""

from __future__ import annotations

# name -> (torch.nn.functional.interpolate mode, antialias), as A1111's shared.latent_upscale_modes
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Pixel resizers every A1111 install has; "None" resizes with Lanczos, as A1111's UpscalerNone ends up doing.
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
