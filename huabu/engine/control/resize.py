"""Fitting a control map to the output size with sd-webui-controlnet's three resize modes.

    "Just Resize"      stretch to width x height (the aspect ratio may change)
    "Crop and Resize"  scale to cover the output, then crop the centre (the default)
    "Resize and Fill"  scale to fit inside the output, then fill the borders with the map's median edge colour

Maps are resized the way the extension does it, so thin lines survive: binary maps (two levels, such as Canny
edges) are resized smoothly and thresholded back to two levels with Otsu's method; maps with few colours
(segmentation, colour grids) use nearest neighbour; anything else uses area when shrinking and cubic when growing.
The extension also thins one-pixel edges after growing them; that step is left out here.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from huabu.core.control_units import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, resize_mode_name
from huabu.core.errors import InvalidRequest
from huabu.engine.control.images import rgb_array


def check_resize_mode(mode: object) -> str:
    """The canonical name of a resize mode (names, aliases and the extension's numbers are accepted)."""
    try:
        return resize_mode_name(mode)
    except ValueError as err:
        raise InvalidRequest(str(err)) from None


def _scaled(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """`array` resized to width x height, keeping binary maps binary and few-colour maps crisp."""
    old_h, old_w = array.shape[:2]
    if (old_w, old_h) == (width, height):
        return array
    colours = np.unique(array.reshape(-1, 3), axis=0)
    # Binary only for two near-black/near-white greys (edge maps): black and pure red is a two-colour map to keep.
    binary = (len(colours) == 2 and bool((colours == colours[:, :1]).all()) and array.min() < 16
              and array.max() > 240)
    shrinking = width * height < old_w * old_h
    if 2 < len(colours) < 200:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    resized = cv2.resize(array, (width, height), interpolation=interpolation)
    if binary:
        gray = resized.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.repeat(gray[:, :, None], 3, axis=2)
    return resized


def resize_control_map(image: Image.Image, width: int, height: int, mode: str = CROP_AND_RESIZE) -> Image.Image:
    """`image` as an RGB control map of exactly width x height, fitted by resize `mode`."""
    mode = check_resize_mode(mode)
    if width < 1 or height < 1:
        raise InvalidRequest(f"cannot fit a control image to {width}x{height}")
    array = rgb_array(image, "control image")
    if mode == JUST_RESIZE:
        return Image.fromarray(_scaled(array, width, height), mode="RGB")
    old_h, old_w = array.shape[:2]
    k_h, k_w = height / old_h, width / old_w
    if mode == RESIZE_AND_FILL:
        k = min(k_h, k_w)
        new_w, new_h = max(1, round(old_w * k)), max(1, round(old_h * k))
        borders = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]], axis=0)
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = np.median(borders, axis=0).astype(np.uint8)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        canvas[top:top + new_h, left:left + new_w] = _scaled(array, new_w, new_h)
        return Image.fromarray(canvas, mode="RGB")
    k = max(k_h, k_w)
    new_w, new_h = max(width, round(old_w * k)), max(height, round(old_h * k))
    scaled = _scaled(array, new_w, new_h)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return Image.fromarray(np.ascontiguousarray(scaled[top:top + height, left:left + width]), mode="RGB")


def pixel_perfect_resolution(image_size: tuple[int, int], width: int, height: int,
                             mode: str = CROP_AND_RESIZE) -> int:
    """The preprocessor resolution (short side) at which the map needs no further scaling to fit the output, as
    sd-webui-controlnet's "Pixel Perfect": the larger scale factor, or the smaller one for "Resize and Fill"."""
    mode = check_resize_mode(mode)
    old_w, old_h = image_size
    k_h, k_w = height / old_h, width / old_w
    k = min(k_h, k_w) if mode == RESIZE_AND_FILL else max(k_h, k_w)
    return int(round(k * min(old_w, old_h)))
