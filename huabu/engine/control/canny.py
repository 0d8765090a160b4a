"""Canny edges (OpenCV), white on black, as the canny ControlNet was trained on."""

from __future__ import annotations

import numbers

import cv2
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.control.images import fit_resolution, gray_to_rgb, rgb_array

# sd-webui-controlnet's defaults for threshold_a / threshold_b.
DEFAULT_LOW = 100
DEFAULT_HIGH = 200


def check_thresholds(low: object, high: object) -> tuple[float, float]:
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidRequest(f"canny {name} threshold must be a number, got {value!r}")
    if not 0 <= low <= high <= 255:
        raise InvalidRequest(f"canny thresholds must satisfy 0 <= low <= high <= 255, got low={low}, high={high}")
    return float(low), float(high)


def canny(image: Image.Image, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH,
          resolution: int | None = None) -> Image.Image:
    """Edges of `image` as a 3-channel 0/255 image, at the input size (or with its short side at `resolution`).

    OpenCV takes the strongest channel's gradient on colour input, so edges between equally bright colours survive.
    """
    low, high = check_thresholds(low, high)
    array = fit_resolution(rgb_array(image, "canny"), resolution)
    return gray_to_rgb(cv2.Canny(array, low, high))
