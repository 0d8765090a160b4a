"""Pure functions behind the studio's fields: slider limits, infotext -> field values, prompt-book insertion, LoRA
tags, mask extraction, text boxes from drawn layers. No gradio here, so each is tested directly."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.core.text_boxes import Box, parse_box
from huabu.engine.prompts.book import PromptPart

# Fields "send to" fills, in the order of GENERATION_FIELDS below (what every generation tab has).
GENERATION_FIELDS = ("prompt", "negative_prompt", "sampler", "schedule_type", "steps", "cfg_scale", "seed", "width",
                     "height", "clip_skip")


def field_bounds(name: str, model: type = GenerateRequest) -> tuple[Any, Any]:
    """(minimum, maximum) the request model allows for `name`, so sliders and validation never disagree."""
    info = model.model_fields[name]
    low = next((bound for m in info.metadata for bound in (getattr(m, "ge", None), getattr(m, "gt", None))
                if bound is not None), None)  # gt: an open lower bound, which the component's minimum may equal
    high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    if low is None or high is None:
        raise KeyError(f"{model.__name__}.{name} has no ge/le bounds")
    return low, high


def size_or_default(value: float | int | None) -> int | None:
    """A size slider's value: 0 (or nothing) means the model's default size."""
    return int(value) if value else None


def fields_from_infotext(text: str) -> dict[str, Any]:
    """Field values for a generation tab from an A1111 infotext, read through the field table
    (huabu.core.fields): only fields the text states, a combined sampler name ("DPM++ 2M Karras") split into
    sampler and schedule, and a value that cannot be read (an unknown sampler) left out rather than guessed."""
    from huabu.core.fields import infotext_to_request_fields
    from huabu.core.pnginfo import parse_infotext

    return infotext_to_request_fields(parse_infotext(text), errors=[])


def _pieces(text: str) -> list[str]:
    return [piece.strip() for piece in text.split(",") if piece.strip()]


def remove_part(prompt: str, part: PromptPart) -> str:
    """Take the part's comma-separated pieces, English or Chinese, out of the prompt (case-insensitive), keeping
    everything else."""
    drop = {piece.lower() for text in (part.prompt, part.zh) for piece in _pieces(text)}
    return ", ".join(piece for piece in _pieces(prompt) if piece.lower() not in drop)


def toggle_part(prompt: str, part: PromptPart, selected: bool, chinese: bool = False) -> str:
    """A prompt-book chip clicked on (add the part's English text, or its Chinese one for a model that reads
    Chinese) or off (remove either)."""
    from huabu.engine.prompts.book import add_part

    return add_part(prompt, part, chinese) if selected else remove_part(prompt, part)


_LORA_TAG = r"<lora:{name}(?::[^>]*)?>"


def set_lora_tag(prompt: str, name: str, weight: float) -> str:
    """Put `<lora:name:weight>` in the prompt (A1111's syntax, which the engine reads), replacing an existing tag
    for the same LoRA; weight 0 removes it."""
    if not name or any(c in name for c in "<>:"):
        raise InvalidRequest(f"LoRA name {name!r} cannot be written as a prompt tag")
    pattern = re.compile(_LORA_TAG.format(name=re.escape(name)))
    tag = f"<lora:{name}:{float(weight):g}>"
    if pattern.search(prompt):
        replaced = pattern.sub(tag if weight else "", prompt, count=1)
        return re.sub(r"\s{2,}", " ", replaced).strip()
    if not weight:
        return prompt
    return f"{prompt.rstrip()} {tag}".strip()


def mask_from_editor(value: dict[str, Any] | None) -> tuple[Image.Image, Image.Image]:
    """(image, mask) from gradio's ImageMask/ImageEditor value: the background, and white wherever any layer has
    paint (white = repaint, black = keep). One-line errors when there is no image or no paint."""
    background = (value or {}).get("background")
    if background is None:
        raise InvalidRequest("upload an image to inpaint first")
    background = _as_pil(background)
    mask = Image.new("L", background.size, 0)
    for layer in value.get("layers") or []:
        layer = _as_pil(layer).convert("RGBA")
        if layer.size != background.size:
            layer = layer.resize(background.size, Image.NEAREST)
        painted = layer.getchannel("A").point(lambda alpha: 255 if alpha > 0 else 0)
        mask.paste(255, (0, 0), painted)
    if mask.getbbox() is None:
        raise InvalidRequest("paint over the part of the image to repaint (the mask is empty)")
    return background.convert("RGB"), mask


def _as_pil(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str):
        with Image.open(value) as image:
            image.load()
            return image
    return Image.fromarray(np.asarray(value))


def box_from_layer(alpha: np.ndarray) -> Box | None:
    """The box (x0, y0, x1, y1; x1 and y1 one past the last pixel) around the painted pixels (alpha > 0) of an
    editor layer, whatever was drawn (an outline, a filled rectangle, a scribble); None when nothing is."""
    ys, xs = np.nonzero(alpha)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def drawn_boxes(value: dict[str, Any] | None, width: int | None, height: int | None) -> list[Box]:
    """One box per painted layer of gradio's ImageEditor value, in layer order, in output pixels: scaled from the
    canvas to width x height (None: the canvas is the output size)."""
    boxes = []
    for layer in (value or {}).get("layers") or []:
        layer = _as_pil(layer).convert("RGBA")
        box = box_from_layer(np.asarray(layer.getchannel("A")))
        if box is not None:
            kx, ky = (width or layer.width) / layer.width, (height or layer.height) / layer.height
            x0, y0, x1, y1 = box
            boxes.append((round(x0 * kx), round(y0 * ky), max(round(x1 * kx), 1), max(round(y1 * ky), 1)))
    return boxes


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def text_boxes_field(words: str | None, boxes: str | None, drawn: Sequence[Box] = ()) -> list:
    """A request's `text_boxes` from the glyph fields: one word a line, the i-th with the i-th typed box (X0,Y0,X1,Y1
    a line) or, when none are typed, the i-th drawn one; words past the boxes are laid out automatically. Without
    words, the bare boxes for the prompt's quoted words, as `huabu generate --text-box` sends them."""
    try:
        given = [parse_box(line) for line in _lines(boxes)] or list(drawn)
    except ValueError as err:
        raise InvalidRequest(str(err)) from None
    texts = _lines(words)
    if not texts:
        return [list(box) for box in given]
    if len(given) > len(texts):
        raise InvalidRequest(f"{len(given)} boxes for {len(texts)} words; give one box per word, in order")
    return [{"text": text, "box": list(given[i]) if i < len(given) else None} for i, text in enumerate(texts)]


def data_url(image: Image.Image) -> str:
    """A PNG data URL, the form request objects accept for images that are not files."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def styled_preview(prompt: str, negative_prompt: str, styles: Sequence[str], book) -> str:
    """What the engine will run once the picked styles are applied (apply_styles): the prompt, and the negative
    prompt after a `---` line when there is one."""
    from huabu.engine.prompts.book import apply_styles

    if not styles:
        return ""
    styled, negative = apply_styles(prompt or "", negative_prompt or "", list(styles), book)
    return f"{styled}\n---\n{negative}" if negative else styled
