"""Reading the images a request names (file paths or base64 data URLs), with one-line errors."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from huabu.core.errors import BadImage

# Decompression bombs: Pillow warns above ~89 Mpx and raises above twice that; we refuse above 64 Mpx.
MAX_PIXELS = 64 * 1024 * 1024


def load_image(ref: str, what: str = "image") -> Image.Image:
    """An RGB image from a path or a `data:image/...;base64,` URL (what the HTTP API receives)."""
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise BadImage(f"{what} data URL is not base64-encoded")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadImage(f"{what} data URL holds invalid base64") from None
        return _decode(io.BytesIO(raw), f"{what} (data URL)")
    path = Path(ref).expanduser()
    if not path.is_file():
        raise BadImage(f"{what} file not found: {path}")
    return _decode(path, f"{what} {path}")


def _decode(source, label: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadImage(f"{label} is too large ({image.width}x{image.height})")
            image.load()
            return image.convert("RGB")
    except BadImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise BadImage(f"cannot read {label}: not an image file Pillow can open") from None


def load_mask(ref: str) -> Image.Image:
    """A mask as a grayscale image: white = repaint, black = keep."""
    return load_image(ref, "mask").convert("L")
