"""What the apps share: input images read and sized for the engine, masks as boolean arrays, pixel hashes for the
infotext, and `AppTag`, the extension through which an app's fields join the one generation path's infotext."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image

from huabu.core.apps import HASH_LENGTH
from huabu.core.errors import InvalidRequest
from huabu.engine.extensions import Extension
from huabu.engine.images import load_image

# Apps hand the engine images at its own size, cropped (never resized) to whole latent pixels, so that what an app
# keeps stays pixel for pixel; 8 covers the VAE factors of SD (8) and huabu-tiny (4).
SIZE_MULTIPLE = 8


class AppTag(Extension):
    """An app's infotext fields (`App: replace`, its inputs' hashes ...), added to each output of the run."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = dict(fields)

    def infotext_params(self) -> dict[str, Any]:
        return dict(self.fields)


def pixel_hash(image: Image.Image) -> str:
    """The short sha256 of an image's RGB pixels and size: the same picture read from a PNG, a re-saved copy or a
    data URL hashes alike."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()[:HASH_LENGTH]


def snapped(image: Image.Image, multiple: int = SIZE_MULTIPLE) -> Image.Image:
    """`image` cropped at the right and bottom to a multiple of `multiple` (at least one multiple)."""
    if image.width < multiple or image.height < multiple:
        raise InvalidRequest(f"the image is {image.width}x{image.height}; apps need at least {multiple}x{multiple}")
    width, height = image.width // multiple * multiple, image.height // multiple * multiple
    return image.crop((0, 0, width, height)) if (width, height) != image.size else image


def read_image(ref: str, what: str) -> tuple[Image.Image, str]:
    """An RGB input image and its pixel hash (taken before any crop, so a reproduction hashes the same file)."""
    image = load_image(ref, what).convert("RGB")
    return image, pixel_hash(image)


def read_mask(ref: str, size: tuple[int, int], what: str = "mask") -> tuple[np.ndarray, str]:
    """A mask file as booleans (white = True) at `size` (cropped like the image it goes with) and its hash."""
    image = load_image(ref, what).convert("L")
    digest = pixel_hash(image)
    if image.width < size[0] or image.height < size[1]:
        raise InvalidRequest(f"the {what} is {image.width}x{image.height} but the image is at least "
                             f"{size[0]}x{size[1]}; they must be the same size")
    return np.asarray(image.crop((0, 0, *size))) > 127, digest


def box_mask(size: tuple[int, int], box: list[int]) -> np.ndarray:
    """True inside X0,Y0,X1,Y1 (X1, Y1 exclusive), clipped to the image."""
    width, height = size
    x0, y0, x1, y1 = box
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x0 >= x1 or y0 >= y1:
        raise InvalidRequest(f"box {','.join(map(str, box))} lies outside the {width}x{height} image")
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` shrunk by `pixels` (a square neighbourhood, as max abs checks count pixels)."""
    if pixels <= 0:
        return mask.copy()
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)


def mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def data_url(image: Image.Image) -> str:
    """A PNG data URL: how an app hands the engine images it made (a mask) or cropped, without temporary files."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
