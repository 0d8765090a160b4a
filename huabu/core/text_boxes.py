"""Text in images, as AnyText writes it: the words a prompt quotes (`a shop sign that says "画布"`) and the boxes
they are drawn in, which the glyph ControlNet unit renders into its control map (huabu.engine.control.glyph).

Boxes are `(x0, y0, x1, y1)` in output pixels, one per quoted word in the order of the quotes; words without a box
are laid out automatically (`auto_boxes`). The `Text boxes` infotext field (core/fields.py) records each word with
the box it was drawn in, so `huabu reproduce` rebuilds the same glyph map from the PNG alone.

Import-light (pydantic-free): huabu.core.requests validates text boxes with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

GLYPH = "glyph"  # the ControlNet module that draws the text boxes
MAX_TEXT_BOXES = 8
MAX_WORD_LENGTH = 64
# Straight quotes as AnyText's prompts, and the curly ones Chinese input methods type.
_QUOTED = re.compile(r'"([^"\n]*)"|“([^”\n]*)”')

Box = tuple[int, int, int, int]


def quoted_words(prompt: str) -> list[str]:
    """The words a prompt quotes, in order: `a sign that says "画布" and "OPEN"` -> ["画布", "OPEN"]."""
    return [(a or b).strip() for a, b in _QUOTED.findall(prompt or "") if (a or b).strip()]


def with_placeholders(prompt: str) -> str:
    """The prompt with each quoted word replaced by `*`, as AnyText encodes its prompts: `a sign that says "画布"`
    -> `a sign that says "*"`. Empty quotes stay."""
    return _QUOTED.sub(lambda match: '"*"' if (match.group(1) or match.group(2) or "").strip() else match.group(0),
                       prompt)


def parse_box(text: str) -> Box:
    """`X0,Y0,X1,Y1` (pixels) -> a box; ValueError when it is not one."""
    try:
        values = tuple(int(round(float(part))) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"text box {text!r}: write X0,Y0,X1,Y1 in pixels, e.g. 16,40,112,88") from None
    return check_box(values)


def check_box(values: Sequence[Any]) -> Box:
    """Four whole numbers with x0 < x1, y0 < y1, none negative; ValueError otherwise."""
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"a text box is 4 numbers X0,Y0,X1,Y1, got {list(values)!r}")
    x0, y0, x1, y1 = (int(round(v)) for v in values)
    if min(x0, y0) < 0 or x0 >= x1 or y0 >= y1:
        raise ValueError(f"text box {x0},{y0},{x1},{y1} must have 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1


def auto_boxes(count: int, width: int, height: int) -> list[Box]:
    """Boxes for `count` words without boxes: stacked bands across the middle of the image, 3/4 of its width, each
    band a fifth of its height at most, centred as a block (AnyText's automatic layout is a similar middle band)."""
    if count <= 0:
        return []
    band = min(height // 5, (height * 3 // 4) // count)
    x0, x1 = width // 8, width - width // 8
    top = (height - band * count) // 2
    return [(x0, top + i * band, x1, top + (i + 1) * band) for i in range(count)]


def place_words(words: Sequence[tuple[str, Sequence[int] | None]], width: int, height: int) -> list[tuple[str, Box]]:
    """Each (word, box) with its box: the given one, checked, else the next of auto_boxes for the boxless words."""
    free = iter(auto_boxes(sum(box is None for _, box in words), width, height))
    return [(word, check_box(list(box)) if box is not None else next(free)) for word, box in words]


def format_text_boxes(boxes: Sequence[tuple[str, Sequence[int]]]) -> str:
    """The `Text boxes` infotext value: `[["画布", 16, 40, 112, 88], ...]` (JSON, words unescaped)."""
    return json.dumps([[text, *map(int, box)] for text, box in boxes], ensure_ascii=False)


def parse_text_boxes(value: object) -> list[dict[str, Any]]:
    """A `Text boxes` value -> [{"text": ..., "box": [x0, y0, x1, y1]}, ...]; ValueError when unreadable."""
    try:
        rows = json.loads(str(value))
    except ValueError:
        raise ValueError(f"{str(value)[:50]!r} is not a JSON list of [word, x0, y0, x1, y1]") from None
    if not isinstance(rows, list):
        raise ValueError(f"{str(value)[:50]!r} is not a JSON list of [word, x0, y0, x1, y1]")
    boxes = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 5 and isinstance(row[0], str)):
            raise ValueError(f"{str(row)[:50]!r} is not [word, x0, y0, x1, y1]")
        boxes.append({"text": row[0], "box": list(check_box(row[1:]))})
    return boxes
