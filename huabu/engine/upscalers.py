"""Pixel upscalers by A1111 name: the built-in resizers (None, Lanczos, Nearest).

Model upscalers (ESRGAN family through spandrel) are not wired yet: spandrel imports torchvision at import time
(its LaMa and RestoreFormer architectures), which cannot be installed beside huabu's pinned torch.
"""

from __future__ import annotations

from collections.abc import Callable

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


def target_size(image: Image.Image, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int]:
    """The output size A1111's extras compute: the image times `scale`, or `size` (width, height)."""
    if size is not None:
        return size
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def upscale(image: Image.Image, size: tuple[int, int], upscaler: str, upscalers: Upscalers,
            second: str = "None", visibility: float = 0.0, crop: bool = True) -> Image.Image:
    """A1111's extras upscale: `upscaler` to `size` (covering it and cropping the centre when the aspect differs
    and `crop`, else stretched), blended with `second`'s result by `visibility` (0: the first only)."""
    width, height = size
    cover = max(width / image.width, height / image.height) if crop else None
    first = _resized(image, size, upscalers.get(upscaler), cover)
    if second in (None, "", "None") or visibility <= 0:
        return first
    return Image.blend(first, _resized(image, size, upscalers.get(second), cover), min(visibility, 1.0))


def _resized(image: Image.Image, size: tuple[int, int], resize: Resize, cover: float | None) -> Image.Image:
    image = image.convert("RGB")
    if cover is None:
        return resize(image, size)
    scaled = resize(image, (max(size[0], round(image.width * cover)), max(size[1], round(image.height * cover))))
    left, top = (scaled.width - size[0]) // 2, (scaled.height - size[1]) // 2
    return scaled.crop((left, top, left + size[0], top + size[1]))
