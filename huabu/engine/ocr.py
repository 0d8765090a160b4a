"""Reading text back out of images, for text-in-image work: rapidocr's PP-OCR ONNX models (shipped in its wheel,
so it works offline) and the measures AnyText reports, sentence accuracy and normalised edit distance.

`read_box` reads one known text box as AnyText's benchmark does: the box is cropped (with a margin), enlarged and
given to the recognition model alone, so a missed detection cannot hide a legible word. `find_text` runs detection
too, for images whose text boxes are unknown (glyph ControlNet training on one's own images).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image

from huabu.core.errors import HuabuError

READ_HEIGHT = 48  # PP-OCR's recogniser reads 48 px high lines; small crops are enlarged to this
MARGIN = 0.15  # of the box's height, added around a box before reading it
_LOCK = threading.Lock()  # one rapidocr engine per process, not re-entrant


@cache
def ocr_engine():
    """The rapidocr engine (CPU, quiet); a one-line error naming the packages when it is not installed."""
    try:
        from rapidocr import RapidOCR
    except ImportError:
        raise HuabuError("OCR needs rapidocr and onnxruntime: pip install rapidocr onnxruntime (or the dev extra, "
                         "pip install -e '.[dev]')") from None
    engine = RapidOCR(params={"Global.log_level": "error"})
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return engine


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return np.ascontiguousarray(array[..., :3])


def read_box(image: Image.Image | np.ndarray, box: Sequence[int]) -> str:
    """The text the recogniser reads inside `box` (x0, y0, x1, y1) of `image` as one horizontal line, spaces
    dropped."""
    array = _rgb(image)
    x0, y0, x1, y1 = box
    pad = round(MARGIN * (y1 - y0))
    h, w = array.shape[:2]
    crop = array[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)]
    if crop.size == 0:
        return ""
    scale = max(1.0, READ_HEIGHT / crop.shape[0])
    crop = np.asarray(Image.fromarray(crop).resize((round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                                                   Image.BICUBIC))
    with _LOCK:
        result = ocr_engine()(crop, use_det=False, use_cls=False, use_rec=True)
    return "".join("".join(result.txts or ()).split())


def find_text(image: Image.Image | np.ndarray, min_score: float = 0.5) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Every line detection and recognition find, as (text, axis-aligned box) in reading order."""
    with _LOCK:
        # every step named: rapidocr keeps the last call's switches (read_box turns detection off)
        result = ocr_engine()(_rgb(image), use_det=True, use_cls=True, use_rec=True)
    found = []
    for text, quad, score in zip(result.txts or (), result.boxes if result.boxes is not None else (),
                                 result.scores or ()):
        if score >= min_score and text.strip():
            xs, ys = np.asarray(quad)[:, 0], np.asarray(quad)[:, 1]
            found.append((text.strip(), (int(xs.min()), int(ys.min()), int(np.ceil(xs.max())),
                                         int(np.ceil(ys.max())))))
    return found


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each 1) between two strings."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ned(prediction: str, truth: str) -> float:
    """AnyText's normalised edit distance score: 1 - edit distance / the longer string's length (1 = exact)."""
    longest = max(len(prediction), len(truth))
    return 1.0 if longest == 0 else 1.0 - edit_distance(prediction, truth) / longest
