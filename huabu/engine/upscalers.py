"""Pixel upscalers by A1111 name: the built-in resizers (None, Lanczos, Nearest) and model upscalers, weight files
in the upscalers folder (and the shipped huabu-tiny-2x) named by their file stem.

Model files are read safely (safetensors, or .pth with torch.load(weights_only=True), as A1111 upscalers ship).
Only Real-ESRGAN's compact layout is run (huabu.engine.sr_compact); ESRGAN, SwinIR, HAT and the rest need
spandrel, which imports torchvision at import time and so cannot be installed beside huabu's torch: naming one is
a one-line error that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

import huabu
from huabu.core.errors import InvalidRequest
from huabu.core.upscalers import BUILTIN_UPSCALERS, LATENT_UPSCALE_MODES

Resize = Callable[[Image.Image, tuple[int, int]], Image.Image]

_RESAMPLE = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
SUFFIXES = (".safetensors", ".pth")
SHIPPED = Path(huabu.__file__).resolve().parent / "tiny" / "huabu-tiny-2x"  # a folder of weights, not a module


class Upscalers:
    """The pixel upscalers a request may name; loaded model upscalers are kept for the next call."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._loaded: dict[Path, Any] = {}

    def files(self) -> dict[str, Path]:
        """Model upscalers by name: the shipped ones, then the upscalers folder's (which win on a shared name)."""
        found: dict[str, Path] = {}
        for folder in (SHIPPED, self.folder):
            if folder is not None and folder.is_dir():
                found.update({path.stem: path for path in sorted(folder.iterdir())
                              if path.suffix.lower() in SUFFIXES and path.is_file()})
        return found

    def names(self) -> list[str]:
        return [*BUILTIN_UPSCALERS, *self.files()]

    def get(self, name: str) -> Resize:
        """A function resizing an image to (width, height) with the upscaler `name`."""
        if name in _RESAMPLE:
            resample = _RESAMPLE[name]
            return lambda image, size: image.resize(size, resample)
        path = self.files().get(name)
        if path is None:
            known = ", ".join([*LATENT_UPSCALE_MODES, *self.names()])
            raise InvalidRequest(f"unknown upscaler {name!r}; use one of {known}")
        model = self._model(path)
        return lambda image, size: _run_model(model, image, size)

    def _model(self, path: Path) -> Any:
        if path not in self._loaded:
            from huabu.engine.checkpoints import load_state_dict
            from huabu.engine.sr_compact import compact_from_state, is_compact

            # A1111's upscalers ship as .pth: read with torch.load(weights_only=True), tensors only.
            state = load_state_dict(path, allow_pickle=path.suffix.lower() == ".pth")
            state = state.get("params_ema") or state.get("params") or state
            if not is_compact(state):
                raise InvalidRequest(f"upscaler {path.stem!r} is not a Real-ESRGAN compact network, the one kind huabu "
                                     f"runs itself; others need spandrel, which needs torchvision (not installable "
                                     f"beside huabu's torch)")
            self._loaded[path] = compact_from_state(state)
        return self._loaded[path]


def _run_model(model: Any, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The network applied until the image reaches `size` (at most three passes), then Lanczos to exactly it."""
    import numpy as np
    import torch

    image = image.convert("RGB")
    for _ in range(3):
        if image.width >= size[0] and image.height >= size[1]:
            break
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            y = model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        image = Image.fromarray(np.round(y * 255).astype(np.uint8))
    return image if image.size == tuple(size) else image.resize(size, Image.LANCZOS)


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
