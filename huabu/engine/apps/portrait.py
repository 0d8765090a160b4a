"""Portraits (FaceChain's flow), the parts without training: find and crop the subject in each photo, caption it,
pick the prompt-book styles, and lay the renders out as a contact sheet. huabu.training.portrait runs the flow."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.grids import grid_font, image_grid

log = logging.getLogger(__name__)

FACE_CASCADE = "haarcascade_frontalface_default.xml"
SUBJECT_THRESHOLD = 60.0  # RGB distance from the border colour that counts as subject (as huabu-tiny's reader)
# Named colours for captions ("on a blue background"): a caption naming what is not the subject helps the LoRA
# learn the subject alone.
CAPTION_COLOURS = {"red": (214, 40, 40), "orange": (245, 135, 30), "yellow": (240, 215, 50), "green": (50, 160, 70),
                   "blue": (40, 85, 215), "purple": (130, 55, 185), "pink": (245, 150, 200),
                   "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}


def face_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The largest face OpenCV's bundled Haar cascade finds (X0, Y0, X1, Y1), or None. OpenCV 5.x wheels ship no
    Haar cascades (cv2.data holds none), so there it finds nothing and the subject crop falls back to the blob."""
    import cv2

    cascade_path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "") / FACE_CASCADE
    if not cascade_path.is_file():
        return None
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    faces = cv2.CascadeClassifier(str(cascade_path)).detectMultiScale(gray, 1.1, 5, minSize=(24, 24))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(x + w), int(y + h)


def blob_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The bounding box of the largest region that differs from the image's border colour (a subject on a plain
    background: huabu-tiny's glyphs, product shots), or None."""
    import cv2

    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                           pixels[:, -2:].reshape(-1, 3)])
    mask = np.linalg.norm(pixels - np.median(ring, axis=0), axis=-1) > SUBJECT_THRESHOLD
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[best, :4]
    return int(x), int(y), int(x + w), int(y + h)


def subject_box(image: Image.Image) -> tuple[tuple[int, int, int, int], str]:
    """Where the subject is and how it was found ("face", "blob", or "whole" when neither found one)."""
    for finder, how in ((face_box, "face"), (blob_box, "blob")):
        box = finder(image)
        if box is not None:
            return box, how
    return (0, 0, image.width, image.height), "whole"


def crop_subject(image: Image.Image, box: tuple[int, int, int, int], size: int, context: float = 1.8) -> Image.Image:
    """A square around `box`, `context` times its longer side (FaceChain keeps head and shoulders), inside the
    image, resized to `size`."""
    x0, y0, x1, y1 = box
    side = min(max(image.width, 1), max(image.height, 1), max(8, round(max(x1 - x0, y1 - y0) * context)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(0, round(cx - side / 2)), image.width - side))
    top = int(min(max(0, round(cy - side / 2)), image.height - side))
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def background_word(image: Image.Image) -> str:
    """The named colour nearest the median of the image's border."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)])
    median = np.median(ring, axis=0)
    return min(CAPTION_COLOURS, key=lambda name: float(((np.asarray(CAPTION_COLOURS[name]) - median) ** 2).sum()))


def caption(name: str, image: Image.Image) -> str:
    """The training caption of one crop: the subject's trigger word and what surrounds it."""
    return f"a {name} on a {background_word(image)} background"


def pick_styles(available: list[str], wanted: list[str], count: int, defaults: list[str] | None = None) -> list[str]:
    """The styles to render: those asked for (each must exist), else the first `count` of `defaults` (when there
    are any) or of the prompt book."""
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise InvalidRequest(f"unknown style {unknown[0]!r}; huabu's prompt book has {len(available)} (huabu "
                             f"studio lists them)")
    return list(wanted) if wanted else (defaults or available)[:count]


def contact_sheet(images: list[Image.Image], labels: list[str]) -> Image.Image:
    """The renders in a near-square grid, each with its style's name under it (the CJK-capable grid font)."""
    from PIL import ImageDraw

    width, height = images[0].size
    size = max(10, width // 10)
    font = grid_font(size)
    strip = size * 2
    cells = []
    for image, label in zip(images, labels):
        cell = Image.new("RGB", (width, height + strip), "white")
        cell.paste(image.convert("RGB"), (0, 0))
        draw = ImageDraw.Draw(cell)
        text = label
        while text and draw.textlength(text, font=font) > width - 4:
            text = text[:-1]
        draw.text((width / 2, height + strip / 2), text, fill="black", font=font, anchor="mm")
        cells.append(cell)
    columns = math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / columns)
    return image_grid(cells, rows)
