"""Image plumbing shared by the preprocessors: input checks, the processor resolution, array <-> PIL."""

from __future__ import annotations

import numbers

import cv2
import numpy as np
from PIL import Image

from huabu.core.errors import BadImage, InvalidRequest

# sd-webui-controlnet's processor_res slider runs 64..2048; we also allow the small sizes huabu-tiny works at.
MIN_RESOLUTION = 16
MAX_RESOLUTION = 4096


def rgb_array(image: object, what: str) -> np.ndarray:
    """The image as an (H, W, 3) uint8 RGB array; anything that is not a PIL image is a one-line error."""
    if image is None:
        raise BadImage(f"{what} needs an input image")
    if not isinstance(image, Image.Image):
        raise BadImage(f"{what} needs a PIL image as input, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise BadImage(f"{what} got an empty image ({image.width}x{image.height})")
    return np.asarray(image.convert("RGB"))


def check_resolution(resolution: object) -> int | None:
    if resolution is None:
        return None
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral):
        raise InvalidRequest(f"resolution must be a whole number of pixels, got {resolution!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise InvalidRequest(f"resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {resolution}")
    return int(resolution)


def fit_resolution(array: np.ndarray, resolution: int | None) -> np.ndarray:
    """Scale so the short side equals `resolution` (sd-webui-controlnet's processor_res); None keeps the size."""
    resolution = check_resolution(resolution)
    if resolution is None:
        return array
    height, width = array.shape[:2]
    k = resolution / min(height, width)
    size = (max(1, round(width * k)), max(1, round(height * k)))
    if size == (width, height):
        return array
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def pad_to_multiple(array: np.ndarray, multiple: int, value: int | None = None) -> np.ndarray:
    """Pad bottom and right up to a multiple of `multiple`: with `value`, or by repeating the edge when None."""
    height, width = array.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return array
    if value is None:
        return cv2.copyMakeBorder(array, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    return cv2.copyMakeBorder(array, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(value,) * 4)


def gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """A single-channel uint8 map as a 3-channel RGB PIL image (ControlNets expect RGB conditioning)."""
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")


def unit_to_rgb(values: np.ndarray) -> Image.Image:
    """A map with values in [0, 1] as an RGB image with 0..255 levels."""
    return gray_to_rgb(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8))
