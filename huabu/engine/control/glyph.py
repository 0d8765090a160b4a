"""Glyph maps: the words to write, rendered white on black in a CJK font at their boxes, as AnyText's glyph
condition. A glyph ControlNet learns to turn such a map into text in the picture; the map depends only on the words,
the boxes, the size and the font, so `huabu reproduce` rebuilds it from the PNG's `Text boxes` field.

Each word is drawn as large as fits its box and centred; a box clearly taller than wide holding several characters
is written top to bottom, one character under the next, as vertical Chinese signs are.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from huabu.core.errors import InvalidRequest
from huabu.core.text_boxes import check_box, place_words
from huabu.engine.control.images import check_resolution
from huabu.engine.fonts import find_cjk_font

DEFAULT_SIZE = 512
VERTICAL_RATIO = 1.5  # height / width above which a box of several characters is written top to bottom
FILL = 0.9  # share of the box the text may take, so strokes do not touch its edges


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        raise InvalidRequest(f"cannot read font {path!r}: give a .ttf, .otf or .ttc file") from None


def _extent(draw: ImageDraw.ImageDraw, text: str, font, vertical: bool) -> tuple[int, int]:
    if vertical:
        boxes = [draw.textbbox((0, 0), ch, font=font) for ch in text]
        return max(b[2] - b[0] for b in boxes), font.size * len(text)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def draw_word(draw: ImageDraw.ImageDraw, text: str, box: Sequence[int], font_path: str) -> None:
    """`text` in white, as large as fits `box` (x0, y0, x1, y1) and centred there."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    vertical = len(text) > 1 and height > VERTICAL_RATIO * width
    size = max(1, int(min(height, width) * FILL) if vertical else int(height * FILL))
    font = _font(font_path, size)
    w, h = _extent(draw, text, font, vertical)
    if w > width * FILL or h > height * FILL:  # shrink once by the overflow, then step down until it fits
        size = max(1, int(size * min(width * FILL / max(w, 1), height * FILL / max(h, 1))))
        font = _font(font_path, size)
        w, h = _extent(draw, text, font, vertical)
        while size > 1 and (w > width * FILL or h > height * FILL):
            size -= 1
            font = _font(font_path, size)
            w, h = _extent(draw, text, font, vertical)
    if vertical:
        top = y0 + (height - h) / 2
        for i, ch in enumerate(text):
            cx, cy = x0 + width / 2, top + (i + 0.5) * font.size
            draw.text((cx, cy), ch, font=font, fill=255, anchor="mm")
        return
    left, top, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((x0 + (width - w) / 2 - left, y0 + (height - h) / 2 - top), text, font=font, fill=255)


def glyph_map(words: Sequence[tuple[str, Sequence[int] | None]], width: int, height: int,
              font: str | Path | None = None) -> Image.Image:
    """A width x height RGB map, black, with each (word, box) drawn white; words without a box are laid out by
    huabu.core.text_boxes.place_words. Boxes may reach past the edges (clipped there)."""
    font_path = str(Path(font).expanduser() if font else find_cjk_font())
    if font and not Path(font_path).is_file():
        raise InvalidRequest(f"font {font} not found")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for text, box in place_words(words, width, height):
        if text.strip():
            draw_word(draw, text.strip(), box, font_path)
    return canvas.convert("RGB")


def glyph(image: Image.Image | None = None, texts: Sequence[str] = (), boxes: Sequence[Sequence[int]] = (),
          font: str | Path | None = None, width: int | None = None, height: int | None = None,
          resolution: int | None = None) -> Image.Image:
    """The glyph map of `texts` at `boxes` (the i-th box for the i-th text; texts past the boxes are laid out
    automatically), on a canvas of the image's size, else width x height (default 512), boxes in its pixels.
    `resolution` scales the canvas's short side and the boxes with it."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise InvalidRequest("glyph needs words to draw (--text, or quoted words in the prompt)")
    if len(boxes) > len(texts):
        raise InvalidRequest(f"{len(boxes)} boxes for {len(texts)} words; give one box per word, in order")
    try:
        checked = [check_box(list(box)) for box in boxes]
    except ValueError as err:
        raise InvalidRequest(str(err)) from None
    canvas_w, canvas_h = image.size if image is not None else (width or DEFAULT_SIZE, height or DEFAULT_SIZE)
    resolution = check_resolution(resolution)
    if resolution is not None:
        k = resolution / min(canvas_w, canvas_h)
        canvas_w, canvas_h = max(1, round(canvas_w * k)), max(1, round(canvas_h * k))
        checked = [tuple(round(v * k) for v in box) for box in checked]
    words = [(text, checked[i] if i < len(checked) else None) for i, text in enumerate(texts)]
    return glyph_map(words, canvas_w, canvas_h, font)
