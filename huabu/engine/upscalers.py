"""Pixel upscalers by A1111 name: the built-in resizers (None, Lanczos, Nearest).

Model upscalers (ESRGAN family through spandrel) are not wired yet: spandrel imports torchvision at import time
(its LaMa and RestoreFormer architectures), which cannot be installed beside huabu's pinned torch.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.upscalers import BUILTIN_UPSCALERS, LATENT_UPSCALE_MODES

Resize = Callable[[Image.Image, tuple[int, int]], Image.Image]

_RESAMPLE = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}


class Upscalers:
    """The pixel upscalers a request may name."""

    def names(self) -> list[str]:
        return list(BUILTIN_UPSCALERS)

    def get(self, name: str) -> Resize:
        """A function resizing an image to (width, height) with the upscaler `name`."""
        if name not in _RESAMPLE:
            known = ", ".join([*LATENT_UPSCALE_MODES, *self.names()])
            raise InvalidRequest(f"unknown upscaler {name!r}; use one of {known}")
        resample = _RESAMPLE[name]
        return lambda image, size: image.resize(size, resample)
